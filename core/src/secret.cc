#include "switchyard/core/secret.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "switchyard/core/error.h"

namespace sy {
namespace {

const std::string kHowToSet = std::string("set cluster.auth.secret_file (a file of mode 600) or ") + kSecretEnv;

void check_length(const std::string& secret, const std::string& where) {
  if (secret.size() < kMinSecretBytes)
    throw_config_error(where + ": the shared secret has " + std::to_string(secret.size()) + " bytes; at least " +
                       std::to_string(kMinSecretBytes) + " are needed (e.g. `openssl rand -hex 32`)");
}

std::string read_secret_file(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    throw_config_error("cluster.auth.secret_file: cannot read " + path + ": " + std::strerror(errno));
  if ((st.st_mode & (S_IRWXG | S_IRWXO)) != 0)
    throw_config_error("cluster.auth.secret_file: " + path + " is accessible by group or others; chmod 600 it");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_config_error("cluster.auth.secret_file: cannot open " + path);
  std::ostringstream s;
  s << in.rdbuf();
  std::string secret = s.str();
  if (!secret.empty() && secret.back() == '\n') secret.pop_back();
  if (!secret.empty() && secret.back() == '\r') secret.pop_back();
  check_length(secret, "cluster.auth.secret_file " + path);
  return secret;
}

}  // namespace

std::string cluster_secret_from_env() {
  const char* v = std::getenv(kSecretEnv);
  if (!v || !*v) return "";
  std::string secret(v);
  check_length(secret, kSecretEnv);
  return secret;
}

std::string cluster_secret(const ClusterConfig& cluster) {
  if (!cluster.auth_secret_file.empty()) return read_secret_file(cluster.auth_secret_file);
  return cluster_secret_from_env();
}

std::string cluster_secret_help() { return kHowToSet; }

}  // namespace sy
