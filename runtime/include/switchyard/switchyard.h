/* Switchyard's C API: Switchyard MoE layers as the MoE backend of another trainer.
 *
 *   sy_tensors   a map of named float32 tensors (METHODS.md §5 names): owned (loaded from a
 *                safetensors file, or initialised) or borrowed from the caller (sy_tensors_borrow)
 *   sy_model     `model.layers` MoE layers: dense parameters in this process, routed experts
 *                here or on a cluster's workers (sy_model_options.coordinator)
 *
 * A model reads borrowed parameters in place: the caller's optimizer may update them between
 * calls, and a caller that moved one says so with sy_model_rebind. Activations are caller
 * buffers too: sy_model_forward reads x and writes y where they are (CPU float32, contiguous,
 * row-major) without copying them in or out; sy_model_backward likewise for grad_y / grad_x.
 * The model keeps what backward needs from the last forward of each layer.
 *
 * Errors: every call returns a sy_status; on failure sy_last_error() (per thread) names the
 * cause (key, file, tensor, shape or peer). No C++ exception and no abort crosses this
 * boundary. A model is not thread-safe: one thread at a time per model.
 *
 * Versioning: SY_API_VERSION changes with any incompatible change; a program checks
 * sy_api_version() == SY_API_VERSION at start-up. */
#ifndef SWITCHYARD_SWITCHYARD_H
#define SWITCHYARD_SWITCHYARD_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SY_API_VERSION 2

typedef enum sy_status {
  SY_OK = 0,
  SY_ERR_RUNTIME = 1,   /* internal failure (numerical, resource) */
  SY_ERR_CONFIG = 2,    /* bad YAML or settings */
  SY_ERR_INPUT = 3,     /* bad arguments, shapes, files, tensors */
  SY_ERR_TRANSPORT = 4  /* dead or silent peers, timeouts */
} sy_status;

int sy_api_version(void);
/* The message of this thread's last failed call ("" after none). Valid until the next call. */
const char* sy_last_error(void);

/* The GEMM library's kernel family (OpenBLAS core name, e.g. "SkylakeX"; "Prescott" is its
 * generic fallback, ~3x slower on AVX-512 CPUs: set OPENBLAS_CORETYPE before loading). */
const char* sy_blas_core(void);

/* A CPU float32 contiguous tensor the caller owns. */
typedef struct sy_tensor {
  float* data;
  const int64_t* shape;
  int32_t ndim;
} sy_tensor;

/* ---- Tensor maps ---- */
typedef struct sy_tensors sy_tensors;

sy_status sy_tensors_create(sy_tensors** out);
/* Reads a safetensors file (F32 tensors). */
sy_status sy_tensors_load(const char* path, sy_tensors** out);
sy_status sy_tensors_save(const sy_tensors* tensors, const char* path);
/* Every parameter of the config's model, initialised as `switchyard init-weights` does. */
sy_status sy_tensors_init(const char* config_yaml, uint64_t seed, sy_tensors** out);
/* Adds or replaces `name` with caller memory (numel(shape) floats) that must outlive its use. */
sy_status sy_tensors_borrow(sy_tensors* tensors, const char* name, float* data, const int64_t* shape, int32_t ndim);
sy_status sy_tensors_count(const sy_tensors* tensors, size_t* count);
/* The i-th name in sorted order; valid while the map is unchanged. */
sy_status sy_tensors_name(const sy_tensors* tensors, size_t i, const char** name);
/* Data and shape of `name`, valid while the map is unchanged. */
sy_status sy_tensors_get(const sy_tensors* tensors, const char* name, sy_tensor* out);
void sy_tensors_destroy(sy_tensors* tensors);

/* .npy files (little-endian float32, C order) as the CLI reads and writes them. */
sy_status sy_npy_save(const char* path, const sy_tensor* tensor);
/* A new owned map holding the file's array under the name "array". */
sy_status sy_npy_load(const char* path, sy_tensors** out);

/* ---- Models ---- */
typedef struct sy_model sy_model;

typedef struct sy_model_options {
  const char* coordinator;  /* NULL or "": experts in this process; else "host:port" of a cluster */
  const char* client_name;  /* shown by `switchyard status`; NULL: "c-api" */
  int use_loaded_model;     /* attached: 0 loads the experts from `weights`; 1 uses the model
                               another client (data-parallel rank 0) loaded */
  int serving;              /* attached: 1 = forward only (workers keep no activations) */
  const char* backend;      /* NULL or "cpu": host memory. "cuda": the engine, its gradients and
                               AdamW state on the CUDA device (device 0); then EVERY sy_tensor
                               given to or returned by this model is CUDA device memory
                               (borrowed weights and grads, x, y, grad_y, grad_x, attention,
                               importance; sy_model_weight/grad return device pointers); owned
                               weights are copied to the device. Calls return when the device
                               work is done (the backend's stream is synchronized); the caller
                               finishes its own writes to the inputs before the call. Local
                               experts only (no coordinator). */
} sy_model_options;

/* `config_yaml` is config text with a `model:` section; `weights` holds every parameter
 * (attached with use_loaded_model: the dense ones suffice). Borrowed tensors of `weights` are
 * read in place by the model; owned ones are copied. `options` may be NULL (local). */
sy_status sy_model_create(const char* config_yaml, const sy_tensors* weights, const sy_model_options* options,
                          sy_model** out);
void sy_model_destroy(sy_model* model);

typedef struct sy_model_info {
  int32_t layers;
  int32_t stages;            /* per layer */
  int64_t hidden_size;
  int32_t needs_importance;  /* some stage routes dynamically (DA-MoE): pass attention or importance */
  int32_t experts_local;     /* 1: experts in this process; 0: on a cluster's workers */
} sy_model_info;
sy_status sy_model_get_info(const sy_model* model, sy_model_info* out);

/* y[T, d] = layer(x[T, d]). Dynamic stages need `attention` (probabilities [B, H, L, L] with
 * B·L = T) or `importance` ([T] or [B, L]); both NULL otherwise. */
sy_status sy_model_forward(sy_model* model, int32_t layer, const sy_tensor* x, sy_tensor* y,
                           const sy_tensor* attention, const sy_tensor* importance);
/* grad_x from grad_y for L = Σ y ⊙ grad_y + aux_scale · aux_loss, of the layer's last forward.
 * Parameter gradients accumulate into `grads` (names and shapes of the model's parameters,
 * e.g. borrowed zeroed buffers) or, when NULL, the model's own (sy_model_grad). Experts on a
 * cluster accumulate on their workers. */
sy_status sy_model_backward(sy_model* model, int32_t layer, const sy_tensor* grad_y, sy_tensor* grad_x,
                            double aux_scale, sy_tensors* grads);
/* Load-balance + z loss of the layer's last forward. */
sy_status sy_model_aux_loss(const sy_model* model, int32_t layer, double* loss);

typedef struct sy_stage_stats {
  int64_t tokens;
  int64_t experts;
  int64_t assignments;        /* Σ_t K_t before capacity */
  int64_t dropped;            /* assignments removed by capacity */
  double mean_k;
  double load_balance_loss;
  double z_loss;
  const int32_t* k;           /* [tokens]: K_t of each token */
  const int64_t* k_histogram; /* [experts + 1]: tokens with K_t = k */
  const int64_t* expert_rows; /* [experts]: rows each expert computed */
} sy_stage_stats;
/* Of the layer's last forward; the arrays are valid until its next forward. */
sy_status sy_model_stage_stats(const sy_model* model, int32_t layer, int32_t stage, sy_stage_stats* out);

/* The model's parameter `name` (its weights) and its own gradient buffer. */
sy_status sy_model_weight(const sy_model* model, const char* name, sy_tensor* out);
sy_status sy_model_grad(const sy_model* model, const char* name, sy_tensor* out);
sy_status sy_model_zero_grads(sy_model* model);
/* Points borrowed parameter `name` at new caller memory of the same shape. */
sy_status sy_model_rebind(sy_model* model, const char* name, float* data);

typedef struct sy_adamw {
  double lr, beta1, beta2, eps, weight_decay;
} sy_adamw;
/* Defaults: lr 1e-3, betas 0.9 / 0.999, eps 1e-8, no weight decay. */
sy_adamw sy_adamw_defaults(void);
/* AdamW on every parameter with the model's own gradients (dense here, experts wherever they
 * live), then zeroes them. `group_size` data-parallel ranks must each call it per step. */
sy_status sy_model_step(sy_model* model, const sy_adamw* adamw, int32_t group_size);
/* AdamW on the experts held by a cluster's workers only (the caller steps the dense
 * parameters). SY_ERR_RUNTIME when the experts are local. */
sy_status sy_model_step_experts(sy_model* model, const sy_adamw* adamw, int32_t group_size);
/* Evaluation option: every stage of every layer drops each token's `n` best routed experts
 * (as capacity drops are; gates not renormalised); 0 routes normally. */
sy_status sy_model_set_drop_top_experts(sy_model* model, int32_t n);
/* Attached: every worker writes its replicas (weights + AdamW state) to `dir`, with a manifest
 * (README "Checkpoints") / restores them from a checkpoint or a cluster.checkpoint_dir (its
 * `latest`); a restore sets the model's step count to the checkpoint's. */
sy_status sy_model_save_checkpoint(sy_model* model, const char* dir);
sy_status sy_model_restore_checkpoint(sy_model* model, const char* dir);
/* Attached: the experts' gradients, summed over replicas (a new owned map). */
sy_status sy_model_fetch_expert_grads(sy_model* model, sy_tensors** out);

#ifdef __cplusplus
}
#endif

#endif /* SWITCHYARD_SWITCHYARD_H */
