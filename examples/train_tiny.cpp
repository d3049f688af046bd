// The smallest complete use of nuri as a library: a tiny Llama-style model learns a repeating
// sentence from tokens held in memory. Exits non-zero if the loss does not fall.
#include <cstdio>
#include <string>

#include "nuri/data/token_file.h"
#include "nuri/model/transformer.h"
#include "nuri/train/trainer.h"

int main() {
  try {
    nuri::ByteTokenizer tok;
    std::string text;
    for (int i = 0; i < 200; ++i) text += "the quick brown fox jumps over the lazy dog. ";
    auto data = nuri::TokenFile::from_tokens(tok.encode(text), "fox", 257);

    nuri::ModelConfig cfg = nuri::model_preset("llama-tiny");
    nuri::Transformer model(cfg, nuri::make_backend("cpu"), /*seed=*/1);
    nuri::TrainConfig tc;
    tc.steps = 30;
    tc.micro_batch = 4;
    tc.seq_len = 64;
    tc.lr = 3e-3f;
    tc.warmup_steps = 5;
    nuri::Trainer trainer(model, tc, data, data);
    const float before = trainer.evaluate();
    for (int s = 0; s < tc.steps; ++s) {
      const nuri::StepStats st = trainer.step();
      if (st.step % 10 == 0) std::printf("step %lld loss %.4f\n", (long long)st.step, st.loss);
    }
    const float after = trainer.evaluate();
    std::printf("loss %.4f -> %.4f (%lld parameters)\n", before, after,
                (long long)cfg.num_params());
    nuri::SampleOptions so;
    so.max_new_tokens = 40;
    so.temperature = 0;
    const auto prompt = tok.encode("the quick");
    std::vector<int32_t> p(prompt.begin(), prompt.end());
    std::printf("sample: the quick%s\n", tok.decode(trainer.generate(p, so)).c_str());
    if (!(after < before - 1.0f)) {
      std::fprintf(stderr, "train_tiny: the loss did not fall by 1 nat (%.4f -> %.4f)\n", before, after);
      return 1;
    }
  } catch (const nuri::Error& e) {
    std::fprintf(stderr, "train_tiny: %s\n", e.what());
    return 1;
  }
  return 0;
}
