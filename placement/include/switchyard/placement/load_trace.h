// Load traces: rows per expert, measured or synthetic, as NumPy .npy files.
//
//   [R, E]         one matrix: row r is one (layer, stage), column e one expert
//   [steps, R, E]  one matrix per step; planning sums them over steps
//
// Dtypes '<f4' '<f8' '<i4' '<i8' '<u4' '<u8', C order, .npy format 1.0 or 2.0. Counts must be
// finite and >= 0. Without a model, row r is (layer r, stage 0) and every row has E experts.
// With a model, R = layers × stages (layers outer), E >= the widest stage, and a row's columns
// past its stage's experts must be 0.
#pragma once

#include <string>
#include <vector>

#include "switchyard/core/config.h"
#include "switchyard/placement/planner.h"

namespace sy {

// The zero matrix of a model's rows (layers outer, stages inner), E = the widest stage.
LoadMatrix load_matrix_rows(const ModelConfig& model);
// The zero matrix of `rows` rows of `experts` experts: row r = (layer r, stage 0).
LoadMatrix load_matrix_rows(int rows, int experts);

// The trace summed over steps. Throws sy::Error(input) naming the file and what is wrong
// (ndim, shape against the model, dtype, truncated data, a negative or non-finite count).
LoadMatrix read_load_trace(const std::string& path, const ModelConfig* model);
// The trace one matrix per step ([R, E] reads as one step).
std::vector<LoadMatrix> read_load_trace_steps(const std::string& path, const ModelConfig* model);

// Writes `load` as '<f8' [R, E] (atomically: path.tmp, then rename).
void write_load_trace(const std::string& path, const LoadMatrix& load);
// Writes the steps as '<f8' [steps, R, E]; every step must have the same rows.
void write_load_trace_steps(const std::string& path, const std::vector<LoadMatrix>& steps);

// Throws sy::Error(input) "<what>: ..." unless `load` is self-consistent: sizes agree,
// row_experts in 1..experts, counts finite and >= 0, zeros past a row's experts.
void check_load_matrix(const LoadMatrix& load, const std::string& what);

}  // namespace sy
