#include "fuzz_support.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstring>

namespace sy::fuzz {

bool same_bits(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape() || a.numel() != b.numel()) return false;
  return a.numel() == 0 || std::memcmp(a.data(), b.data(), static_cast<size_t>(a.numel()) * sizeof(float)) == 0;
}

std::string scratch_path(std::string_view name) {
  const char* dir = std::getenv("TMPDIR");
  std::string base = dir && *dir ? dir : (::access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
  return base + "/sy-fuzz-" + std::to_string(::getpid()) + "-" + std::string(name);
}

void write_file(const std::string& path, const uint8_t* data, size_t size) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) bug("cannot create scratch file " + path);
  size_t done = 0;
  while (done < size) {
    const ssize_t n = ::write(fd, data + done, size - done);
    if (n <= 0) bug("cannot write scratch file " + path);
    done += static_cast<size_t>(n);
  }
  ::close(fd);
}

}  // namespace sy::fuzz
