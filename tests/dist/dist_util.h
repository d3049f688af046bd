// What the multi-rank training tests share (test_dp, test_tp, test_pp): the job's communicator,
// the text they train on, and the check that a checkpoint's consolidated weights and a model file
// hold one process's weights.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>

#include "nuri/ckpt/consolidate.h"
#include "nuri/ckpt/safetensors.h"
#include "nuri/data/token_file.h"
#include "nuri/dist/communicator.h"
#include "nuri/dist/launch.h"
#include "nuri/model/transformer.h"

namespace nuri::test {

/// The job's communicator (every rank joins on the first call), with a 120 s timeout.
inline std::shared_ptr<Communicator> world() {
  static std::shared_ptr<Communicator> comm = [] {
    CommOptions opt;
    opt.timeout_s = 120;
    return std::shared_ptr<Communicator>(make_communicator(detect_launch(), opt));
  }();
  return comm;
}

/// 400 lines of Hamlet's question, numbered modulo 17, as byte tokens.
inline std::shared_ptr<TokenFile> hamlet() {
  std::string text;
  for (int i = 0; i < 400; ++i) {
    text += "to be or not to be, that is the question; whether 'tis nobler in the mind ";
    text += std::to_string(i % 17);
  }
  return TokenFile::from_tokens(ByteTokenizer().encode(text), "hamlet", 257);
}

/// Consolidates the checkpoint under `root` into root/model.safetensors, requires it to be the
/// model file root/direct.safetensors bit for bit, and returns the largest difference of its
/// weights from `ref`'s and (in max_abs) the largest of ref's weights.
inline double model_file_difference(const Transformer& ref, const std::string& root,
                                    double& max_abs) {
  const std::string out = root + "/model.safetensors";
  consolidate_checkpoint(root, out);
  SafetensorsFile f(out), direct(root + "/direct.safetensors");
  double max_diff = 0;
  max_abs = 0;
  for (const auto& named : ref.parameters()) {
    Tensor got = Tensor::empty(named.tensor.shape(), DType::f32);
    Tensor got2 = Tensor::empty(named.tensor.shape(), DType::f32);
    f.read(named.name, got);
    direct.read(named.name, got2);
    EXPECT_EQ(std::memcmp(got.raw(), got2.raw(), got.nbytes()), 0)
        << named.name << ": save_model and the consolidated checkpoint differ";
    for (int64_t i = 0; i < got.numel(); ++i) {
      const double w = named.tensor.data<float>()[i];
      max_diff = std::max(max_diff, std::abs(double(got.data<float>()[i]) - w));
      max_abs = std::max(max_abs, std::abs(w));
    }
  }
  return max_diff;
}

}  // namespace nuri::test
