// Small helpers for YAML error messages, shared by every reader of YAML files (the config
// schema, placement files), so they name lines and values the same way.
#pragma once

#include <yaml-cpp/yaml.h>

#include <string>

namespace sy {

// 1-based line of a node's mark, or `fallback` when yaml-cpp has none.
int yaml_line(const YAML::Mark& mark, int fallback);
// How an error message shows a value: "\"8\"", "a list", "a map", "null (no value)".
std::string describe_yaml_value(const YAML::Node& node);
// The whole text of a YAML file; a config error "<path>: cannot open|read <what>: <errno text>".
std::string read_yaml_file(const std::string& path, const std::string& what);

}  // namespace sy
