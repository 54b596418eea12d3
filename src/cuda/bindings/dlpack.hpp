// The DLPack ABI (https://dmlc.github.io/dlpack/latest/c_api.html), written out from the spec: the
// tensor descriptor and the two managed-tensor envelopes a "dltensor" capsule (legacy, v0.x) or a
// "dltensor_versioned" capsule (v1.x) carries. Only the layout matters; the static_asserts pin it.
#pragma once
#include <cstddef>
#include <cstdint>

namespace lrpfast {
namespace dlpack {

enum DeviceType : std::int32_t { kDLCPU = 1, kDLCUDA = 2, kDLCUDAHost = 3, kDLCUDAManaged = 13 };
enum TypeCode : std::uint8_t { kDLInt = 0, kDLUInt = 1, kDLFloat = 2, kDLBfloat = 4, kDLBool = 6 };

struct Device {
  std::int32_t device_type;  // DeviceType
  std::int32_t device_id;
};
struct DataType {
  std::uint8_t code;  // TypeCode
  std::uint8_t bits;
  std::uint16_t lanes;
};
struct Tensor {
  void* data;  // + byte_offset = the first element
  Device device;
  std::int32_t ndim;
  DataType dtype;
  std::int64_t* shape;    // ndim values
  std::int64_t* strides;  // ndim values in ELEMENTS, or null = compact row-major
  std::uint64_t byte_offset;
};
// capsule "dltensor"; the consumer renames it "used_dltensor" and calls deleter once when done.
struct ManagedTensor {
  Tensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(ManagedTensor* self);
};
struct PackVersion {
  std::uint32_t major;
  std::uint32_t minor;
};
constexpr std::uint64_t kFlagReadOnly = 1ULL << 0;
constexpr std::uint64_t kFlagIsCopied = 1ULL << 1;
// capsule "dltensor_versioned" (renamed "used_dltensor_versioned"); major version 1.
struct ManagedTensorVersioned {
  PackVersion version;
  void* manager_ctx;
  void (*deleter)(ManagedTensorVersioned* self);
  std::uint64_t flags;
  Tensor dl_tensor;
};

static_assert(sizeof(Device) == 8 && sizeof(DataType) == 4, "DLPack layout");
static_assert(offsetof(Tensor, shape) == 24 && sizeof(Tensor) == 48, "DLPack layout");
static_assert(offsetof(ManagedTensor, deleter) == 56 && sizeof(ManagedTensor) == 64,
              "DLPack layout");
static_assert(offsetof(ManagedTensorVersioned, dl_tensor) == 32, "DLPack layout");

}  // namespace dlpack
}  // namespace lrpfast
