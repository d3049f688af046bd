// Where a tensor lives. A CUDA device under emulation is still DeviceType::cuda: the emulated
// runtime keeps its memory on the host, but code above the backend cannot tell the difference.
#pragma once

#include <string>

namespace nuri {

enum class DeviceType { cpu, cuda };

struct Device {
  DeviceType type = DeviceType::cpu;
  int index = 0;

  static Device cpu() { return Device{DeviceType::cpu, 0}; }
  static Device cuda(int i = 0) { return Device{DeviceType::cuda, i}; }
  bool is_cpu() const { return type == DeviceType::cpu; }
  bool operator==(const Device& o) const { return type == o.type && index == o.index; }
  bool operator!=(const Device& o) const { return !(*this == o); }
  /// "cpu" or "cuda:N".
  std::string str() const;
};

}  // namespace nuri
