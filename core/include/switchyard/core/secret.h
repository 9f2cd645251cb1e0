// The cluster's shared secret (README "Security"): every control-channel connection proves
// knowledge of it (transport/control.h). One source for every process of a cluster:
//
//   cluster.auth.secret_file   a file holding the secret (the coordinator, `switchyard up`)
//   SWITCHYARD_SECRET          the secret itself (every process; `up` exports it to its workers)
//
// The file wins when the config names one. No secret: no authentication, and control servers
// only bind to loopback addresses.
#pragma once

#include <string>

#include "switchyard/core/config.h"

namespace sy {

inline constexpr const char* kSecretEnv = "SWITCHYARD_SECRET";
inline constexpr size_t kMinSecretBytes = 16;

// The secret from `cluster.auth.secret_file` when set, else $SWITCHYARD_SECRET, else "" (none).
// Throws sy::Error(config) naming the file or the variable: unreadable, readable by group or
// others, or shorter than kMinSecretBytes (one trailing newline of a file is not part of it).
std::string cluster_secret(const ClusterConfig& cluster);

// The same for processes without a config (workers, clients, admin commands): the environment.
std::string cluster_secret_from_env();

// "set cluster.auth.secret_file (...) or SWITCHYARD_SECRET": for errors that need a secret.
std::string cluster_secret_help();

}  // namespace sy
