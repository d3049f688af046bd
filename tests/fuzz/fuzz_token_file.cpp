// Token files as a user hands them over: an llm.c shard or a .npy array (TokenFile::open by
// content), or a headerless uint16/uint32 array when the user names its format (read_data with
// data.format). The first byte picks the route; the rest is the file. A file that opens is read
// whole, so every token the header promises must be there.
#include <cstdint>
#include <vector>

#include "fuzz_util.h"
#include "nuri/data/corpus.h"
#include "nuri/data/token_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace nuri;
  if (size < 1) return 0;
  const uint8_t route = (data[0] & 0x7f) % 5;
  const std::string bytes(reinterpret_cast<const char*>(data + 1), size - 1);
  const int64_t vocab = (data[0] & 0x80) ? 50257 : 0;  // with and without the vocabulary check
  fuzz::refused_or_read([&] {
    std::shared_ptr<TokenFile> f;
    switch (route) {
      case 0: f = TokenFile::open(fuzz::put("shard.bin", bytes), vocab); break;
      case 1: f = TokenFile::open(fuzz::put("tokens.npy", bytes), vocab); break;
      case 2: f = read_data(fuzz::put("train.bin", bytes), vocab, nullptr, "uint16"); break;
      case 3: f = read_data(fuzz::put("train.bin", bytes), vocab, nullptr, "uint32"); break;
      default: f = read_data(fuzz::put("tokens.npy", bytes), vocab, nullptr, "auto"); break;
    }
    std::vector<int32_t> out(size_t(f->size()));
    f->read(0, f->size(), out.data());
    if (f->size() > 0) (void)f->max_token();
  });
  return 0;
}
