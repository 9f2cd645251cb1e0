// The files of a cluster checkpoint around the workers' own (README "Checkpoints").
//
//   D/worker-{id}.safetensors   each worker's replicas under the placement (ExpertStore format)
//   D/placement.yaml            that placement (placement YAML: usable as cluster.placement)
//   D/model.yaml                the model config
//   D/manifest.yaml             step, placement epoch, the workers that wrote a file; written
//                               last, so a directory with a manifest is complete
//
// Periodic checkpoints (cluster.checkpoint_every_steps) live in a checkpoint_dir R: the workers
// write into R/step-{S}.tmp/, which is renamed to R/step-{S}/ once its manifest is written, then
// R/latest (a file holding "step-{S}") is replaced (temporary file, rename). Any crash leaves
// `latest` naming a complete checkpoint.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace sy::client_detail {

struct CheckpointManifest {
  uint64_t step = 0;             // training steps taken when it was written
  uint64_t placement_epoch = 0;  // the placement's epoch in the cluster that wrote it
  std::vector<int> workers;      // the workers that wrote worker-{id}.safetensors
};

inline const char* kManifestFile = "manifest.yaml";
inline const char* kPlacementFile = "placement.yaml";
inline const char* kModelFile = "model.yaml";
inline const char* kLatestFile = "latest";

std::string worker_file(const std::string& dir, int worker);  // dir/worker-{id}.safetensors
std::string step_dir_name(uint64_t step);                     // "step-{S}"

// Writes placement.yaml, model.yaml, then manifest.yaml into `dir` (each: temporary file,
// fsync, rename). Input errors name the file.
void write_checkpoint_files(const std::string& dir, const CheckpointManifest& manifest,
                            const std::string& placement_yaml, const std::string& model_yaml);

// The checkpoint `dir` names: `dir` itself when it holds a manifest, else the one `dir/latest`
// names (a checkpoint_dir); nullopt when it has neither (a checkpoint of worker files only, as
// written before manifests). Input errors name `latest` and what it names.
std::optional<std::string> resolve_checkpoint(const std::string& dir);
// Reads and checks dir/manifest.yaml; input errors name the file, line and key.
CheckpointManifest read_manifest(const std::string& dir);
// The whole text of dir/`name`; an input error naming it when it cannot be read.
std::string read_checkpoint_text(const std::string& dir, const char* name);

// R/step-{S}.tmp (complete, manifest written) becomes R/step-{S}, `latest` names it, and of the
// complete checkpoints up to step S the newest `keep` stay (those of later steps, left by a run
// that was restored to an earlier step, stay until overwritten). Input errors name the path.
void publish_checkpoint(const std::string& root, uint64_t step, int keep);

}  // namespace sy::client_detail
