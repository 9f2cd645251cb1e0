// The YAML reading machinery shared by every reader of YAML files (the config schema, placement
// files): error lines and values named the same way, map keys checked the same way (plain,
// unique, known), integers parsed the same way.
#pragma once

#include <yaml-cpp/yaml.h>

#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace sy {

// 1-based line of a node's mark, or `fallback` when yaml-cpp has none.
int yaml_line(const YAML::Mark& mark, int fallback);
// How an error message shows a value: "\"8\"", "a list", "a map", "null (no value)".
std::string describe_yaml_value(const YAML::Node& node);
// The whole text of a YAML file; a config error "<path>: cannot open|read <what>: <errno text>".
std::string read_yaml_file(const std::string& path, const std::string& what);

// The first document of a YAML text and how many it has, as YAML::LoadAll would give them but
// without its hang: yaml-cpp 0.7's LoadAll never returns on some malformed text (a lone ","
// makes its parser start a new empty document forever, without consuming input, while the list
// of documents grows). Text that does not advance is a syntax error here. Throws YAML::Exception.
struct YamlDocuments {
  YAML::Node first;    // null when the text has no document
  size_t count = 0;    // documents in the text
  YAML::Mark second;   // where the second one starts (count >= 2)
};
YamlDocuments yaml_load_documents(const std::string& text);

// How a reader reports an error: "<source>:<line>: <where>: <message>". Must throw.
using YamlFail = std::function<void(int line, const std::string& where, const std::string& message)>;

// One key of a map, with the line it is on.
struct YamlEntry {
  std::string key;
  int line = 0;
  YAML::Node value;
};
// The entries of map `node` (at `where`, on `line`), in order; a non-scalar, duplicate or unknown
// key (not in `known`) fails naming "<where>.<key>" and, for an unknown one, the known keys.
std::vector<YamlEntry> yaml_map_entries(const YAML::Node& node, const std::string& where, int line,
                                        std::span<const std::string_view> known, const YamlFail& fail);
// "<where>.<key>", or just the key at the top (`where` empty).
std::string yaml_join(const std::string& where, std::string_view key);
// Integer text ("-3", "+7") into `value` (set only on ok).
enum class YamlInt { ok, not_an_integer, out_of_range };
YamlInt parse_yaml_int(std::string_view text, int& value);
// A plain decimal number (a leading '+' allowed), finite; false (value untouched) otherwise.
bool parse_yaml_double(std::string_view text, double& value);

}  // namespace sy
