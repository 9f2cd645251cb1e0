// The expert-load heatmap as a file (`switchyard placement show`): one row per (layer·stage),
// one column per expert, white (0) to dark blue (the largest count); optionally a second panel
// of rows per (layer·stage, worker). SVG (labels, a tooltip per cell) or PNG (libpng; labels in a
// 3x5 pixel font, no tooltip).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sy {

struct HeatmapPanel {
  std::string title;
  std::vector<std::string> row_labels;  // one per row: "L0·S1"
  std::string column_prefix;            // "E" → E0, E1, ...
  int columns = 0;
  std::vector<double> values;           // [rows × columns]; NaN = no such cell (a narrower stage)
};

// Writes `panels` (stacked) to `path`; the format from its extension (.svg or .png). Throws
// sy::Error(config) for another extension, sy::Error(input) when the file cannot be written.
void write_heatmap(const std::string& path, const std::vector<HeatmapPanel>& panels);
std::string heatmap_svg(const std::vector<HeatmapPanel>& panels);

}  // namespace sy
