// Rank, world size and coordinator from torchrun / Open MPI / Slurm variables, with a fake getenv.
#include <gtest/gtest.h>

#include <map>
#include <string>

#include "switchyard/core/error.h"
#include "switchyard/launch/launch_env.h"

namespace sy {
namespace {

struct FakeEnv {
  std::map<std::string, std::string> vars;
  GetEnv getenv() const {
    return [this](const char* name) -> const char* {
      auto it = vars.find(name);
      return it == vars.end() ? nullptr : it->second.c_str();
    };
  }
};

void expect_error(const FakeEnv& env, const std::string& fragment) {
  try {
    detect_launch_env(env.getenv());
    ADD_FAILURE() << "accepted; expected " << fragment;
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::config);
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

TEST(LaunchEnv, NoLauncher) {
  EXPECT_FALSE(detect_launch_env(FakeEnv{}.getenv()));
  EXPECT_FALSE(detect_launch_env(FakeEnv{{{"SWITCHYARD_COORDINATOR", "h:1"}, {"RANK", ""}}}.getenv()));
  EXPECT_EQ(coordinator_from_env(FakeEnv{}.getenv()), "");
}

TEST(LaunchEnv, Torchrun) {
  FakeEnv env{{{"RANK", "3"}, {"WORLD_SIZE", "8"}, {"LOCAL_RANK", "1"}, {"MASTER_ADDR", "10.0.0.5"},
               {"MASTER_PORT", "29500"}}};
  auto le = detect_launch_env(env.getenv());
  ASSERT_TRUE(le);
  EXPECT_EQ(le->source, "torchrun");
  EXPECT_EQ(le->rank, 3);
  EXPECT_EQ(le->world_size, 8);
  EXPECT_EQ(le->local_rank, 1);
  EXPECT_EQ(le->coordinator, "10.0.0.5:29501");  // MASTER_PORT + 1: MASTER_PORT is torch's store

  env.vars["SWITCHYARD_COORDINATOR_PORT"] = "7000";
  EXPECT_EQ(detect_launch_env(env.getenv())->coordinator, "10.0.0.5:7000");
  env.vars["SWITCHYARD_COORDINATOR"] = "coord.example:9000";  // always wins
  EXPECT_EQ(detect_launch_env(env.getenv())->coordinator, "coord.example:9000");

  FakeEnv v6{{{"RANK", "0"}, {"WORLD_SIZE", "1"}, {"MASTER_ADDR", "fd00::2"}, {"MASTER_PORT", "29500"}}};
  EXPECT_EQ(detect_launch_env(v6.getenv())->coordinator, "[fd00::2]:29501");
}

TEST(LaunchEnv, OpenMpi) {
  FakeEnv env{{{"OMPI_COMM_WORLD_RANK", "0"}, {"OMPI_COMM_WORLD_SIZE", "2"}, {"OMPI_COMM_WORLD_LOCAL_RANK", "0"},
               {"SWITCHYARD_COORDINATOR", "node0:5555"}}};
  auto le = detect_launch_env(env.getenv());
  ASSERT_TRUE(le);
  EXPECT_EQ(le->source, "openmpi");
  EXPECT_EQ(le->rank, 0);
  EXPECT_EQ(le->world_size, 2);
  EXPECT_EQ(le->coordinator, "node0:5555");
  env.vars.erase("SWITCHYARD_COORDINATOR");
  EXPECT_EQ(detect_launch_env(env.getenv())->coordinator, "");  // from cluster.coordinator then
}

TEST(LaunchEnv, Slurm) {
  FakeEnv env{{{"SLURM_PROCID", "5"}, {"SLURM_NTASKS", "6"}, {"SLURM_LOCALID", "2"}}};
  auto le = detect_launch_env(env.getenv());
  ASSERT_TRUE(le);
  EXPECT_EQ(le->source, "slurm");
  EXPECT_EQ(le->rank, 5);
  EXPECT_EQ(le->world_size, 6);
  EXPECT_EQ(le->local_rank, 2);
  EXPECT_EQ(le->coordinator, "");
  // A Slurm script exporting MASTER_ADDR/MASTER_PORT works like torchrun's.
  env.vars["MASTER_ADDR"] = "node17";
  env.vars["MASTER_PORT"] = "12000";
  EXPECT_EQ(detect_launch_env(env.getenv())->coordinator, "node17:12001");
}

TEST(LaunchEnv, PrecedenceTorchrunThenMpiThenSlurm) {
  FakeEnv env{{{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "1"}, {"OMPI_COMM_WORLD_RANK", "3"},
               {"OMPI_COMM_WORLD_SIZE", "4"}}};
  EXPECT_EQ(detect_launch_env(env.getenv())->source, "openmpi");
  env.vars["RANK"] = "1";
  env.vars["WORLD_SIZE"] = "2";
  env.vars["MASTER_ADDR"] = "m";
  env.vars["MASTER_PORT"] = "1";
  auto le = detect_launch_env(env.getenv());
  EXPECT_EQ(le->source, "torchrun");
  EXPECT_EQ(le->rank, 1);
}

TEST(LaunchEnv, MalformedValuesNameTheVariable) {
  expect_error({{{"RANK", "one"}, {"WORLD_SIZE", "2"}}}, "environment variable RANK=\"one\": expected an integer");
  expect_error({{{"RANK", "2"}, {"WORLD_SIZE", "2"}}}, "RANK=\"2\": rank must be below WORLD_SIZE (2)");
  expect_error({{{"RANK", "0"}, {"WORLD_SIZE", "0"}}}, "WORLD_SIZE=\"0\": must be >= 1");
  expect_error({{{"RANK", "-1"}, {"WORLD_SIZE", "2"}}}, "RANK=\"-1\": must be >= 0");
  expect_error({{{"RANK", "1"}, {"WORLD_SIZE", "2x"}}}, "WORLD_SIZE=\"2x\": expected an integer");
  expect_error({{{"RANK", "1"}}}, "RANK=\"1\": set without WORLD_SIZE");
  expect_error({{{"OMPI_COMM_WORLD_SIZE", "4"}}}, "OMPI_COMM_WORLD_SIZE=\"4\": set without OMPI_COMM_WORLD_RANK");
  expect_error({{{"SLURM_PROCID", "4"}, {"SLURM_NTASKS", "4"}}}, "SLURM_PROCID=\"4\": rank must be below SLURM_NTASKS");
  expect_error({{{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "4"}, {"SLURM_LOCALID", "x"}}}, "SLURM_LOCALID=\"x\"");
  expect_error({{{"RANK", "0"}, {"WORLD_SIZE", "1"}, {"SWITCHYARD_COORDINATOR", "nohost"}}},
               "SWITCHYARD_COORDINATOR=\"nohost\": expected host:port");
  expect_error({{{"RANK", "0"}, {"WORLD_SIZE", "1"}, {"MASTER_ADDR", "m"}, {"MASTER_PORT", "http"}}},
               "MASTER_PORT=\"http\": expected an integer");
  expect_error({{{"RANK", "0"}, {"WORLD_SIZE", "1"}, {"MASTER_ADDR", "m"}, {"MASTER_PORT", "65535"}}},
               "MASTER_PORT=\"65535\": Switchyard's coordinator uses MASTER_PORT + 1");
  expect_error({{{"RANK", "0"}, {"WORLD_SIZE", "1"}, {"MASTER_ADDR", "m"}}},
               "MASTER_ADDR=\"m\": set, but neither MASTER_PORT nor SWITCHYARD_COORDINATOR_PORT");
  expect_error({{{"RANK", "0"}, {"WORLD_SIZE", "1"}, {"MASTER_ADDR", "m"}, {"SWITCHYARD_COORDINATOR_PORT", "70000"}}},
               "SWITCHYARD_COORDINATOR_PORT=\"70000\": must be <= 65535");
  expect_error({{{"RANK", "0"}, {"WORLD_SIZE", "1"}, {"MASTER_ADDR", "a b"}, {"MASTER_PORT", "5"}}},
               "MASTER_ADDR=\"a b\": not a host name");
}

TEST(LaunchEnv, RealGetenvDefault) {
  // The default argument reads the process environment; unset variables give nullopt.
  ::unsetenv("RANK");
  ::unsetenv("WORLD_SIZE");
  ::unsetenv("OMPI_COMM_WORLD_RANK");
  ::unsetenv("OMPI_COMM_WORLD_SIZE");
  ::unsetenv("SLURM_PROCID");
  ::unsetenv("SLURM_NTASKS");
  EXPECT_FALSE(detect_launch_env());
  ::setenv("SLURM_PROCID", "1", 1);
  ::setenv("SLURM_NTASKS", "3", 1);
  auto le = detect_launch_env();
  ASSERT_TRUE(le);
  EXPECT_EQ(le->rank, 1);
  ::unsetenv("SLURM_PROCID");
  ::unsetenv("SLURM_NTASKS");
}

}  // namespace
}  // namespace sy
