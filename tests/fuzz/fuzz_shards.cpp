// A directory of token shards as `nuri tokenize` writes it: tokenize.json (the shard and mask
// lists, the tokenizer's vocabulary), a shard and its loss mask (written under the train and
// the validation split's first names). The input is the three files
// joined by separator lines (fuzz_util.h); read_shards reads both splits with and without a
// model vocabulary, and a masked split must give one mask value a token.
#include <cstdint>

#include "fuzz_util.h"
#include "nuri/data/corpus.h"
#include "nuri/data/token_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace nuri;
  const auto files = fuzz::parts(data, size, 3);
  fuzz::put("tokenize.json", files[0]);
  for (const char* split : {"train", "val"}) {  // one shard and mask under both splits' names
    fuzz::put(std::string(split) + "_000000.bin", files[1]);
    fuzz::put(std::string(split) + "_000000.mask.npy", files[2]);
  }
  for (const char* split : {"train", "val"}) {
    for (int64_t vocab : {int64_t(0), int64_t(300)}) {
      fuzz::refused_or_read([&] {
        auto f = read_shards(fuzz::scratch(), split, vocab, nullptr);
        if (!f) return;
        int64_t trained = 0;
        for (int64_t i = 0; i < f->size(); ++i) trained += f->trained(i);
        if (trained > f->size()) std::abort();
      });
    }
  }
  return 0;
}
