// `switchyard up --config C` as a child of a test: its endpoint once it printed "cluster ready",
// the lines it prints, SIGINT and its exit; and CLI commands run against it.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "local_cluster.h"

namespace sy {

// `cmd` through the shell: exit code and stdout (stderr stays the test's unless `cmd` redirects it).
inline std::pair<int, std::string> run_shell(const std::string& cmd) {
  FILE* p = popen(cmd.c_str(), "r");
  std::string text;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) text.append(buf, n);
  const int st = pclose(p);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, text};
}

// Runs `env switchyard args` (stderr with stdout): exit code and output.
inline std::pair<int, std::string> run_cli(const std::string& env, const std::string& args) {
  return run_shell(env + " " + kBinary + " " + args + " 2>&1");
}

class UpProcess {
 public:
  // Starts it and reads its output until "cluster ready" (ready() false when it never came).
  // `env`: variables set for it (and its workers); `stderr_path`: where its stderr goes ("" =
  // the test's).
  explicit UpProcess(const std::string& config_path, const std::vector<std::pair<std::string, std::string>>& env = {},
                     const std::string& stderr_path = "") {
    int out_pipe[2];
    if (pipe(out_pipe) != 0) return;
    pid_ = fork();
    if (pid_ == 0) {
      dup2(out_pipe[1], STDOUT_FILENO);
      close(out_pipe[0]);
      for (const auto& [k, v] : env) ::setenv(k.c_str(), v.c_str(), 1);
      if (!stderr_path.empty()) {
        const int fd = ::open(stderr_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) dup2(fd, STDERR_FILENO);
      }
      execl(kBinary.c_str(), kBinary.c_str(), "up", "--config", config_path.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    close(out_pipe[1]);
    out_ = fdopen(out_pipe[0], "r");
    std::string l;
    while (!ready_ && next_line(l)) {
      if (l.rfind("coordinator listening on ", 0) == 0) endpoint_ = l.substr(25, l.size() - 26);
      if (l.rfind("dashboard at http://", 0) == 0) http_ = l.substr(20, l.find('/', 20) - 20);
      if (l.rfind("cluster ready", 0) == 0) ready_ = true;
    }
  }
  ~UpProcess() {
    if (pid_ > 0) (void)stop();
  }
  bool ready() const { return ready_ && !endpoint_.empty(); }
  const std::string& endpoint() const { return endpoint_; }
  const std::string& http_endpoint() const { return http_; }  // "host:port" of cluster.http
  // The next line it prints (false at its end).
  bool next_line(std::string& line) {
    char buf[1024];
    if (!out_ || !fgets(buf, sizeof buf, out_)) return false;
    line = buf;
    return true;
  }
  // SIGINT, then everything it printed until it exited, and its exit code (-1: killed).
  std::pair<int, std::string> stop() {
    kill(pid_, SIGINT);
    std::string rest, l;
    while (next_line(l)) rest += l;
    if (out_) fclose(out_);
    out_ = nullptr;
    int wstatus = 0;
    waitpid(pid_, &wstatus, 0);
    pid_ = -1;
    return {WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : -1, rest};
  }

 private:
  pid_t pid_ = -1;
  FILE* out_ = nullptr;
  std::string endpoint_, http_;
  bool ready_ = false;
};

}  // namespace sy
