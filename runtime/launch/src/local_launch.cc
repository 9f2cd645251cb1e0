#include "switchyard/launch/local_launch.h"

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <map>
#include <thread>

extern char** environ;

namespace sy::launch {

LocalProcess LocalProcess::spawn(const std::vector<std::string>& argv,
                                 const std::vector<std::pair<std::string, std::string>>& extra_env) {
  if (argv.empty()) throw Error(ErrorKind::transport, "spawn: empty command line");
  std::map<std::string, std::string> env;
  for (char** e = environ; *e; ++e) {
    const std::string kv = *e;
    const size_t eq = kv.find('=');
    if (eq != std::string::npos) env[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  for (const auto& [k, v] : extra_env) env[k] = v;
  std::vector<std::string> env_strings;
  for (const auto& [k, v] : env) env_strings.push_back(k + "=" + v);
  std::vector<char*> envp, args;
  for (std::string& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<std::string> argv_copy = argv;
  for (std::string& s : argv_copy) args.push_back(s.data());
  args.push_back(nullptr);
  pid_t pid = -1;
  // The child gets stdin/out/err only: an inherited descriptor (the coordinator's listening
  // socket, under `switchyard up`) would keep its port bound after the parent closed it.
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addclosefrom_np(&actions, 3);
  const int rc = posix_spawn(&pid, args[0], &actions, nullptr, args.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) throw Error(ErrorKind::transport, "spawn of " + argv[0] + " failed: " + std::strerror(rc));
  LocalProcess p;
  p.pid_ = pid;
  p.name_ = argv[0] + " (pid " + std::to_string(pid) + ")";
  return p;
}

LocalProcess::LocalProcess(LocalProcess&& other) noexcept : pid_(other.pid_), name_(std::move(other.name_)) {
  other.pid_ = -1;
}

LocalProcess& LocalProcess::operator=(LocalProcess&& other) noexcept {
  if (this != &other) {
    kill();
    pid_ = other.pid_;
    name_ = std::move(other.name_);
    other.pid_ = -1;
  }
  return *this;
}

LocalProcess::~LocalProcess() { kill(); }

void LocalProcess::kill() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGKILL);
  int status = 0;
  while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
  pid_ = -1;
}

Result<int> LocalProcess::wait(std::chrono::milliseconds timeout) {
  if (pid_ <= 0) return Status(StatusCode::invalid_argument, "wait: no child process");
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  auto pause = std::chrono::microseconds(500);
  while (true) {
    int status = 0;
    const pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      pid_ = -1;
      if (WIFEXITED(status)) return WEXITSTATUS(status);
      if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
      return 255;
    }
    if (r < 0 && errno != EINTR) {
      pid_ = -1;
      return Status(StatusCode::internal, "waitpid for " + name_ + ": " + std::strerror(errno));
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      const std::string name = name_;
      kill();
      return Status(StatusCode::timeout, name + " still running after " + std::to_string(timeout.count()) +
                                             " ms; killed");
    }
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::microseconds(20000));
  }
}

std::optional<int> LocalProcess::poll() {
  if (pid_ <= 0) return std::nullopt;
  int status = 0;
  pid_t r;
  while ((r = waitpid(pid_, &status, WNOHANG)) < 0 && errno == EINTR) {
  }
  if (r != pid_) return std::nullopt;
  pid_ = -1;
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 255;
}

std::string current_executable() { return std::filesystem::read_symlink("/proc/self/exe").string(); }

std::vector<std::pair<std::string, std::string>> shared_core_env(int processes) {
  std::vector<std::pair<std::string, std::string>> env;
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  if (!std::getenv("OMP_NUM_THREADS"))
    env.emplace_back("OMP_NUM_THREADS", std::to_string(std::max(1u, cores / static_cast<unsigned>(std::max(processes, 1)))));
  if (!std::getenv("OMP_WAIT_POLICY")) env.emplace_back("OMP_WAIT_POLICY", "passive");
  return env;
}

}  // namespace sy::launch
