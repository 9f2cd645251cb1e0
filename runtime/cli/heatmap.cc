#include "heatmap.h"

#include <png.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "switchyard/core/error.h"

namespace sy {
namespace {

constexpr int kCell = 18, kLeft = 64, kTop = 34, kGap = 24;

struct Rgb {
  uint8_t r, g, b;
};
// White at 0 to dark blue at the panel's largest value (the dashboard's scale).
Rgb heat(double v, double max) {
  const double x = max > 0 ? std::clamp(v / max, 0.0, 1.0) : 0;
  auto c = [x](double a, double b) { return static_cast<uint8_t>(std::lround(a + (b - a) * x)); };
  return {c(240, 23), c(244, 64), c(250, 160)};
}
double panel_max(const HeatmapPanel& p) {
  double m = 0;
  for (double v : p.values)
    if (!std::isnan(v)) m = std::max(m, v);
  return m;
}
int rows_of(const HeatmapPanel& p) { return static_cast<int>(p.row_labels.size()); }
int panel_height(const HeatmapPanel& p) { return kTop + kCell * rows_of(p); }
int width_of(const std::vector<HeatmapPanel>& panels) {
  int cols = 1;
  for (const HeatmapPanel& p : panels) cols = std::max(cols, p.columns);
  return kLeft + kCell * cols + 8;
}
int height_of(const std::vector<HeatmapPanel>& panels) {
  int h = 0;
  for (const HeatmapPanel& p : panels) h += panel_height(p) + kGap;
  return h;
}
std::string escape_xml(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '<') out += "&lt;";
    else if (c == '>') out += "&gt;";
    else if (c == '&') out += "&amp;";
    else if (c == '"') out += "&quot;";
    else out += c;
  }
  return out;
}

// A 3x5 pixel font for the PNG's labels ("L0·S1", "E7", "W2", "row 3"), drawn 2x: each glyph is
// 5 rows of 3 bits, the high bit on the left. Other characters are left blank.
const uint8_t* glyph(char c) {
  static const uint8_t digits[10][5] = {{7, 5, 5, 5, 7}, {2, 6, 2, 2, 7}, {7, 1, 7, 4, 7}, {7, 1, 7, 1, 7},
                                        {5, 5, 7, 1, 1}, {7, 4, 7, 1, 7}, {7, 4, 7, 5, 7}, {7, 1, 1, 1, 1},
                                        {7, 5, 7, 5, 7}, {7, 5, 7, 1, 7}};
  static const uint8_t L[5] = {4, 4, 4, 4, 7}, S[5] = {7, 4, 7, 1, 7}, E[5] = {7, 4, 7, 4, 7}, W[5] = {5, 5, 5, 7, 5},
                       r[5] = {0, 5, 6, 4, 4}, o[5] = {0, 7, 5, 5, 7}, w[5] = {0, 5, 5, 7, 7}, dot[5] = {0, 0, 2, 0, 0};
  if (c >= '0' && c <= '9') return digits[c - '0'];
  switch (c) {
    case 'L': return L;
    case 'S': return S;
    case 'E': return E;
    case 'W': return W;
    case 'r': return r;
    case 'o': return o;
    case 'w': return w;
    case '.': return dot;
    default: return nullptr;
  }
}
constexpr int kGlyphScale = 2, kAdvance = 4 * kGlyphScale;

// "·" (UTF-8 C2 B7) draws as a dot.
std::string ascii_label(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (static_cast<unsigned char>(s[i]) == 0xC2 && i + 1 < s.size() && static_cast<unsigned char>(s[i + 1]) == 0xB7) {
      out += '.';
      ++i;
    } else {
      out += s[i];
    }
  }
  return out;
}

void draw_text(std::vector<uint8_t>& image, int w, int h, int x, int y, const std::string& text) {
  for (char c : ascii_label(text)) {
    if (const uint8_t* g = glyph(c))
      for (int gy = 0; gy < 5 * kGlyphScale; ++gy)
        for (int gx = 0; gx < 3 * kGlyphScale; ++gx) {
          const int px = x + gx, py = y + gy;
          if (px >= w || py >= h || !((g[gy / kGlyphScale] >> (2 - gx / kGlyphScale)) & 1)) continue;
          const size_t at = (static_cast<size_t>(py) * static_cast<size_t>(w) + static_cast<size_t>(px)) * 3;
          image[at] = image[at + 1] = 0x1d, image[at + 2] = 0x30;
        }
    x += kAdvance;
  }
}

void write_png(const std::string& path, const std::vector<HeatmapPanel>& panels) {
  const int w = width_of(panels), h = height_of(panels);
  std::vector<uint8_t> image(static_cast<size_t>(w) * static_cast<size_t>(h) * 3, 255);
  int y0 = 0;
  for (const HeatmapPanel& p : panels) {
    const double max = panel_max(p);
    for (int r = 0; r < rows_of(p); ++r) draw_text(image, w, h, 2, y0 + kTop + r * kCell + 4, p.row_labels[static_cast<size_t>(r)]);
    const int label_width = kAdvance * static_cast<int>(p.column_prefix.size() + std::to_string(p.columns).size());
    const int step = std::max(1, (label_width + kCell - 1) / kCell);
    for (int c = 0; c < p.columns; c += step)
      draw_text(image, w, h, kLeft + c * kCell + 1, y0 + kTop - 14, p.column_prefix + std::to_string(c));
    for (int r = 0; r < rows_of(p); ++r)
      for (int c = 0; c < p.columns; ++c) {
        const double v = p.values[static_cast<size_t>(r * p.columns + c)];
        if (std::isnan(v)) continue;
        const Rgb col = heat(v, max);
        for (int dy = 0; dy < kCell - 1; ++dy)
          for (int dx = 0; dx < kCell - 1; ++dx) {
            const size_t at = (static_cast<size_t>(y0 + kTop + r * kCell + dy) * static_cast<size_t>(w) +
                               static_cast<size_t>(kLeft + c * kCell + dx)) * 3;
            image[at] = col.r, image[at + 1] = col.g, image[at + 2] = col.b;
          }
      }
    y0 += panel_height(p) + kGap;
  }
  const std::string tmp = path + ".tmp";
  png_image png{};  // libpng's simplified API: no setjmp
  png.version = PNG_IMAGE_VERSION;
  png.width = static_cast<png_uint_32>(w);
  png.height = static_cast<png_uint_32>(h);
  png.format = PNG_FORMAT_RGB;
  if (!png_image_write_to_file(&png, tmp.c_str(), 0, image.data(), 0, nullptr))
    throw Error(ErrorKind::input, "cannot write " + tmp + ": " + png.message);
  std::filesystem::rename(tmp, path);
}

}  // namespace

std::string heatmap_svg(const std::vector<HeatmapPanel>& panels) {
  std::ostringstream s;
  const int w = width_of(panels), h = height_of(panels);
  s << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << w << "\" height=\"" << h << "\" viewBox=\"0 0 " << w
    << " " << h << "\" font-family=\"sans-serif\" font-size=\"10\">\n<rect width=\"100%\" height=\"100%\" fill=\"#fff\"/>\n";
  int y0 = 0;
  for (const HeatmapPanel& p : panels) {
    const double max = panel_max(p);
    s << "<text x=\"2\" y=\"" << y0 + 12 << "\" font-size=\"12\">" << escape_xml(p.title) << " (max " << max << ")</text>\n";
    const int step = std::max(1, 24 / kCell + 1);
    for (int c = 0; c < p.columns; c += step)
      s << "<text x=\"" << kLeft + c * kCell + 1 << "\" y=\"" << y0 + kTop - 4 << "\">" << escape_xml(p.column_prefix)
        << c << "</text>\n";
    for (int r = 0; r < rows_of(p); ++r) {
      s << "<text x=\"2\" y=\"" << y0 + kTop + r * kCell + 12 << "\">" << escape_xml(p.row_labels[static_cast<size_t>(r)])
        << "</text>\n";
      for (int c = 0; c < p.columns; ++c) {
        const double v = p.values[static_cast<size_t>(r * p.columns + c)];
        if (std::isnan(v)) continue;
        const Rgb col = heat(v, max);
        s << "<rect class=\"cell\" x=\"" << kLeft + c * kCell << "\" y=\"" << y0 + kTop + r * kCell << "\" width=\""
          << kCell - 1 << "\" height=\"" << kCell - 1 << "\" fill=\"rgb(" << int(col.r) << "," << int(col.g) << ","
          << int(col.b) << ")\" data-value=\"" << v << "\"><title>" << escape_xml(p.row_labels[static_cast<size_t>(r)])
          << " " << escape_xml(p.column_prefix) << c << ": " << v << "</title></rect>\n";
      }
    }
    y0 += panel_height(p) + kGap;
  }
  s << "</svg>\n";
  return s.str();
}

void write_heatmap(const std::string& path, const std::vector<HeatmapPanel>& panels) {
  const std::string ext = std::filesystem::path(path).extension().string();
  if (ext == ".png") return write_png(path, panels);
  if (ext != ".svg") throw Error(ErrorKind::config, "placement show: --out " + path + ": the name must end in .svg or .png");
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary);
    out << heatmap_svg(panels);
    if (!out) throw Error(ErrorKind::input, "cannot write " + tmp);
  }
  std::filesystem::rename(tmp, path);
}

}  // namespace sy
