// safetensors files (checkpoints, Hugging Face weights): the header is parsed and validated by
// SafetensorsFile, then every tensor is read as f32 where its dtype converts, or as itself.
#include <cstdint>

#include "fuzz_util.h"
#include "nuri/ckpt/safetensors.h"
#include "nuri/core/tensor.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace nuri;
  const std::string path =
      fuzz::put("model.safetensors", std::string(reinterpret_cast<const char*>(data), size));
  fuzz::refused_or_read([&] {
    SafetensorsFile f(path);
    for (const std::string& name : f.names()) {
      const SafetensorsEntry& e = f.entry(name);
      const int64_t numel = shape_numel(e.shape);
      const bool floating = e.dtype == DType::f32 || e.dtype == DType::bf16 || e.dtype == DType::f16;
      Tensor dst = Tensor::empty({numel}, floating ? DType::f32 : e.dtype);
      f.read(name, dst);
      if (numel > 1) {
        Tensor part = Tensor::empty({numel - 1}, dst.dtype());
        f.read_range(name, 1, numel, part);
      }
    }
  });
  return 0;
}
