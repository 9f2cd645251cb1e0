// The cluster's shared secret: the config's file wins over SWITCHYARD_SECRET; bad files and
// short secrets are config errors naming the file or the variable.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "switchyard/core/error.h"
#include "switchyard/core/secret.h"

namespace sy {
namespace {

namespace fs = std::filesystem;

struct Env {
  explicit Env(const char* v) {
    if (v) ::setenv(kSecretEnv, v, 1);
    else ::unsetenv(kSecretEnv);
  }
  ~Env() { ::unsetenv(kSecretEnv); }
};

std::string write_secret(const std::string& name, const std::string& text, fs::perms perms) {
  const std::string path = ::testing::TempDir() + "/" + name;
  std::ofstream(path) << text;
  fs::permissions(path, perms);
  return path;
}

std::string config_error(const ClusterConfig& c) {
  try {
    cluster_secret(c);
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::config);
    return e.what();
  }
  return "";
}

const auto kOwner = fs::perms::owner_read | fs::perms::owner_write;

TEST(ClusterSecret, FileWinsOverEnvironmentAndLosesOneTrailingNewline) {
  Env env("the environment's secret value");
  ClusterConfig c;
  EXPECT_EQ(cluster_secret(c), "the environment's secret value");
  c.auth_secret_file = write_secret("sy_secret_ok", "the file's secret value\n", kOwner);
  EXPECT_EQ(cluster_secret(c), "the file's secret value");
  EXPECT_EQ(cluster_secret_from_env(), "the environment's secret value");
}

TEST(ClusterSecret, NoneMeansEmpty) {
  Env env(nullptr);
  EXPECT_EQ(cluster_secret(ClusterConfig{}), "");
}

TEST(ClusterSecret, BadFilesAndShortSecretsNameTheirSource) {
  Env env(nullptr);
  ClusterConfig c;
  c.auth_secret_file = write_secret("sy_secret_open", "a long enough secret value", kOwner | fs::perms::group_read);
  std::string m = config_error(c);
  EXPECT_NE(m.find(c.auth_secret_file), std::string::npos) << m;
  EXPECT_NE(m.find("chmod 600"), std::string::npos) << m;
  c.auth_secret_file = write_secret("sy_secret_short", "short\n", kOwner);
  m = config_error(c);
  EXPECT_NE(m.find("5 bytes; at least 16"), std::string::npos) << m;
  c.auth_secret_file = ::testing::TempDir() + "/sy_secret_missing";
  m = config_error(c);
  EXPECT_NE(m.find("cannot read " + c.auth_secret_file), std::string::npos) << m;
  Env short_env("tiny");
  m = config_error(ClusterConfig{});
  EXPECT_NE(m.find("SWITCHYARD_SECRET: the shared secret has 4 bytes"), std::string::npos) << m;
}

TEST(ClusterSecret, TheSettingResolvesAgainstTheConfigFile) {
  const Config cfg = load_config_string("cluster:\n  auth:\n    secret_file: keys/secret\n", "/etc/sy/cluster.yaml");
  EXPECT_EQ(cfg.cluster.auth_secret_file, "/etc/sy/keys/secret");
  EXPECT_EQ(load_config_string("cluster:\n  workers: 2\n").cluster.auth_secret_file, "");
}

}  // namespace
}  // namespace sy
