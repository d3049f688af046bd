// Dumps what the PyTorch parity test compares: a model's initial weights, one batch, the
// logits, loss and every gradient, and the losses of 10 AdamW steps on that batch.
// Usage: parity_dump PRESET OUT_DIR [B T]
// OUT_DIR/manifest.json names every tensor with its shape, dtype and file (raw little-endian).
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>

#include "nuri/core/rng.h"
#include "nuri/model/transformer.h"
#include "nuri/train/optimizer.h"

using namespace nuri;

namespace {

struct Manifest {
  std::string json = "{\n  \"tensors\": [\n";
  bool first = true;
  void add(const std::string& dir, const std::string& name, const Tensor& t) {
    const std::string file = name + ".bin";
    Tensor c = t.clone();
    std::ofstream(dir + "/" + file, std::ios::binary)
        .write(static_cast<const char*>(c.raw()), std::streamsize(c.nbytes()));
    std::string shape;
    for (int64_t d : t.shape()) shape += (shape.empty() ? "" : ", ") + std::to_string(d);
    json += std::string(first ? "" : ",\n") + "    {\"name\": \"" + name + "\", \"file\": \"" +
            file + "\", \"dtype\": \"" + dtype_name(t.dtype()) + "\", \"shape\": [" + shape + "]}";
    first = false;
  }
};

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: parity_dump PRESET OUT_DIR [B T]\n";
    return 2;
  }
  try {
    const std::string preset = argv[1], dir = argv[2];
    const int64_t b = argc > 3 ? std::stoll(argv[3]) : 2, t = argc > 4 ? std::stoll(argv[4]) : 32;
    const ModelConfig cfg = model_preset(preset);
    Transformer model(cfg, make_backend("cpu"), /*seed=*/1337);
    Manifest m;
    for (const auto& p : model.parameters()) m.add(dir, "param." + p.name, p.tensor);
    Tensor tokens = Tensor::empty({b, t}, DType::i32), targets = Tensor::empty({b, t}, DType::i32);
    Philox rng(7, stream_id("parity/batch"));
    for (int64_t i = 0; i < b * t; ++i) {
      tokens.data<int32_t>()[i] = int32_t(rng.bits(uint64_t(2 * i)) % uint32_t(cfg.vocab_size));
      targets.data<int32_t>()[i] = int32_t(rng.bits(uint64_t(2 * i + 1)) % uint32_t(cfg.vocab_size));
    }
    targets.data<int32_t>()[3] = -100;  // one ignored target
    m.add(dir, "tokens", tokens);
    m.add(dir, "targets", targets);
    const float loss = model.forward(tokens, targets);
    Tensor loss_t = Tensor::empty({1}, DType::f32);
    loss_t.data<float>()[0] = loss;
    m.add(dir, "loss", loss_t);
    m.add(dir, "logits", model.logits(tokens));
    model.forward(tokens, targets);
    model.backward(1.f);
    for (const auto& g : model.gradients()) m.add(dir, "grad." + g.name, g.tensor);

    AdamWParams hp;
    hp.beta1 = 0.9f;
    hp.beta2 = 0.95f;
    hp.eps = 1e-8f;
    hp.weight_decay = 0.1f;
    AdamW opt(model, hp);
    const float lr = 1e-3f;
    Tensor losses = Tensor::empty({10}, DType::f32);
    opt.step(lr);  // step 1 uses the gradients computed above
    for (int s = 1; s < 10; ++s) {
      model.zero_grad();
      losses.data<float>()[s - 1] = model.forward(tokens, targets);
      model.backward(1.f);
      opt.step(lr);
    }
    losses.data<float>()[9] = model.forward(tokens, targets);
    m.add(dir, "adamw_losses", losses);
    m.json += "\n  ],\n  \"config\": {\"preset\": \"" + preset + "\", \"summary\": \"" +
              cfg.summary() + "\", \"norm_eps\": " + std::to_string(cfg.norm_eps) +
              ", \"rope_theta\": " + std::to_string(cfg.rope_theta) +
              ", \"padded_vocab\": " + std::to_string(cfg.padded_vocab()) +
              "},\n  \"adamw\": {\"lr\": 0.001, \"beta1\": 0.9, \"beta2\": 0.95, \"eps\": 1e-08, "
              "\"weight_decay\": 0.1}\n}\n";
    std::ofstream(dir + "/manifest.json") << m.json;
    std::cout << "wrote " << dir << "/manifest.json (loss " << loss << ")\n";
  } catch (const Error& e) {
    std::cerr << "parity_dump: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
