/* The C API from C: a model from config text and a weight map, forward / backward on caller
 * buffers, finite differences, borrowed weights read in place, the optimizer step, stats, and
 * errors as status codes with messages.
 *   test_capi CONFIG_DIR      (configs/models of the source tree) */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "switchyard/switchyard.h"

static int failures = 0;
#define CHECK(cond, ...)                                     \
  do {                                                       \
    if (!(cond)) {                                           \
      fprintf(stderr, "%s:%d: FAILED %s: ", __FILE__, __LINE__, #cond); \
      fprintf(stderr, __VA_ARGS__);                          \
      fprintf(stderr, "\n");                                 \
      ++failures;                                            \
    }                                                        \
  } while (0)
#define OK(call) CHECK((call) == SY_OK, "%s", sy_last_error())

static char* read_text(const char* dir, const char* name) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE* f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "cannot open %s\n", path);
    exit(2);
  }
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char* s = malloc((size_t)n + 1);
  if (fread(s, 1, (size_t)n, f) != (size_t)n) exit(2);
  s[n] = 0;
  fclose(f);
  return s;
}

static unsigned long long rng = 88172645463325252ULL;
static float uniform(void) { /* xorshift64 → [-1, 1) */
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (float)((rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

/* L = Σ y ⊙ g for the layer at x (aux_scale 0: the aux loss is not part of L here). */
static double loss_at(sy_model* m, const sy_tensor* x, sy_tensor* y, const float* g, int64_t n,
                      const sy_tensor* importance) {
  if (sy_model_forward(m, 0, x, y, NULL, importance) != SY_OK) {
    fprintf(stderr, "forward: %s\n", sy_last_error());
    exit(1);
  }
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += (double)y->data[i] * g[i];
  return s;
}

static void test_config(const char* dir, const char* file, int dynamic) {
  char* yaml = read_text(dir, file);
  sy_tensors* w = NULL;
  OK(sy_tensors_init(yaml, 3, &w));
  /* Borrow every weight into caller memory: the model must read it there. */
  sy_tensors* borrowed = NULL;
  OK(sy_tensors_create(&borrowed));
  size_t count = 0;
  OK(sy_tensors_count(w, &count));
  float** mem = calloc(count, sizeof(float*));
  for (size_t i = 0; i < count; ++i) {
    const char* name;
    sy_tensor t;
    OK(sy_tensors_name(w, i, &name));
    OK(sy_tensors_get(w, name, &t));
    int64_t n = 1;
    for (int d = 0; d < t.ndim; ++d) n *= t.shape[d];
    mem[i] = malloc(sizeof(float) * (size_t)(n ? n : 1));
    memcpy(mem[i], t.data, sizeof(float) * (size_t)n);
    OK(sy_tensors_borrow(borrowed, name, mem[i], t.shape, t.ndim));
  }
  sy_model* m = NULL;
  OK(sy_model_create(yaml, borrowed, NULL, &m));
  sy_model_info info;
  OK(sy_model_get_info(m, &info));
  CHECK(info.layers == 1 && info.experts_local == 1, "layers %d local %d", info.layers, info.experts_local);
  CHECK(info.needs_importance == dynamic, "needs_importance %d", info.needs_importance);

  const int64_t T = 12, d = info.hidden_size, n = T * d;
  int64_t shape[2] = {T, d};
  float *xd = malloc(sizeof(float) * n), *yd = malloc(sizeof(float) * n), *gd = malloc(sizeof(float) * n),
        *gx = malloc(sizeof(float) * n), *v = malloc(sizeof(float) * n), *y0 = malloc(sizeof(float) * n);
  for (int64_t i = 0; i < n; ++i) {
    xd[i] = uniform();
    gd[i] = uniform();
    v[i] = uniform();
  }
  float imp[12];
  for (int i = 0; i < 12; ++i) imp[i] = 0.05f + 0.1f * (float)((i * 7) % 12);
  int64_t imp_shape[1] = {T};
  sy_tensor x = {xd, shape, 2}, y = {yd, shape, 2}, g = {gd, shape, 2}, dx = {gx, shape, 2};
  sy_tensor importance = {imp, imp_shape, 1};
  const sy_tensor* ip = dynamic ? &importance : NULL;

  /* Forward writes where the caller said; it is deterministic. */
  OK(sy_model_forward(m, 0, &x, &y, NULL, ip));
  CHECK(y.data == yd, "output moved");
  memcpy(y0, yd, sizeof(float) * n);
  OK(sy_model_forward(m, 0, &x, &y, NULL, ip));
  CHECK(memcmp(y0, yd, sizeof(float) * n) == 0, "two forwards differ");
  sy_stage_stats st;
  OK(sy_model_stage_stats(m, 0, 0, &st));
  CHECK(st.tokens == T, "tokens %lld", (long long)st.tokens);
  int64_t rows = 0, ksum = 0;
  for (int64_t e = 0; e < st.experts; ++e) rows += st.expert_rows[e];
  for (int64_t t = 0; t < T; ++t) ksum += st.k[t];
  CHECK(rows == st.assignments - st.dropped, "rows %lld", (long long)rows);
  CHECK(ksum == st.assignments, "k sum %lld vs %lld", (long long)ksum, (long long)st.assignments);

  /* Backward, then a directional finite difference of L = Σ y ⊙ g along v. */
  OK(sy_model_backward(m, 0, &g, &dx, 0.0, NULL));
  double analytic = 0;
  for (int64_t i = 0; i < n; ++i) analytic += (double)gx[i] * v[i];
  const float h = 1e-4f;
  for (int64_t i = 0; i < n; ++i) xd[i] += h * v[i];
  const double lp = loss_at(m, &x, &y, gd, n, ip);
  for (int64_t i = 0; i < n; ++i) xd[i] -= 2 * h * v[i];
  const double lm = loss_at(m, &x, &y, gd, n, ip);
  for (int64_t i = 0; i < n; ++i) xd[i] += h * v[i];
  const double numeric = (lp - lm) / (2.0 * h);
  CHECK(fabs(numeric - analytic) <= 2e-2 * fmax(1.0, fabs(analytic)), "%s: d/dx numeric %.6f analytic %.6f", file,
        numeric, analytic);

  /* The router weight is read from caller memory: changing it there changes the output. */
  sy_tensor r;
  OK(sy_model_weight(m, "stages.0.router.weight", &r));
  float* caller_router = NULL;
  for (size_t i = 0; i < count; ++i) {
    const char* name;
    OK(sy_tensors_name(w, i, &name));
    if (strcmp(name, "stages.0.router.weight") == 0) caller_router = mem[i];
  }
  CHECK(r.data == caller_router, "the model holds a copy of a borrowed weight");
  r.data = caller_router;
  OK(sy_model_forward(m, 0, &x, &y, NULL, ip));
  memcpy(y0, yd, sizeof(float) * n);
  for (int64_t i = 0; i < r.shape[0] * r.shape[1]; ++i) r.data[i] *= -1.0f;
  OK(sy_model_forward(m, 0, &x, &y, NULL, ip));
  CHECK(memcmp(y0, yd, sizeof(float) * n) != 0, "negated router changed nothing: not read in place");
  for (int64_t i = 0; i < r.shape[0] * r.shape[1]; ++i) r.data[i] *= -1.0f;

  /* Gradients accumulate into the model's map; step moves the weights and zeroes them. */
  OK(sy_model_zero_grads(m));
  OK(sy_model_forward(m, 0, &x, &y, NULL, ip));
  OK(sy_model_backward(m, 0, &g, &dx, 1.0, NULL));
  sy_tensor gr;
  OK(sy_model_grad(m, "stages.0.router.weight", &gr));
  double gnorm = 0;
  for (int64_t i = 0; i < gr.shape[0] * gr.shape[1]; ++i) gnorm += fabs(gr.data[i]);
  CHECK(gnorm > 0 && isfinite(gnorm), "router gradient |g|_1 = %g", gnorm);
  const float before = r.data[0];
  sy_adamw adam = sy_adamw_defaults();
  adam.lr = 1e-2;
  OK(sy_model_step(m, &adam, 1));
  CHECK(r.data[0] != before, "step did not move the router weight");
  OK(sy_model_grad(m, "stages.0.router.weight", &gr));
  CHECK(gr.data[0] == 0.0f, "gradients not zeroed after step");
  CHECK(sy_model_step_experts(m, &adam, 1) == SY_ERR_RUNTIME, "step_experts on local experts");

  /* Errors: codes and messages naming the cause. */
  int64_t bad_shape[2] = {T, d + 1};
  sy_tensor bad = {xd, bad_shape, 2};
  CHECK(sy_model_forward(m, 0, &bad, &y, NULL, ip) == SY_ERR_INPUT, "bad shape accepted");
  CHECK(strstr(sy_last_error(), "hidden_size") != NULL, "message: %s", sy_last_error());
  CHECK(sy_model_forward(m, 3, &x, &y, NULL, ip) == SY_ERR_INPUT, "layer 3 accepted");
  CHECK(strstr(sy_last_error(), "layer 3") != NULL, "message: %s", sy_last_error());
  if (dynamic) {
    CHECK(sy_model_forward(m, 0, &x, &y, NULL, NULL) == SY_ERR_INPUT, "dynamic stage without importance");
    CHECK(strstr(sy_last_error(), "importance") != NULL, "message: %s", sy_last_error());
  }
  CHECK(sy_model_forward(NULL, 0, &x, &y, NULL, NULL) == SY_ERR_INPUT, "NULL model");

  sy_model_destroy(m);
  for (size_t i = 0; i < count; ++i) free(mem[i]);
  free(mem);
  free(xd), free(yd), free(gd), free(gx), free(v), free(y0);
  sy_tensors_destroy(borrowed);
  sy_tensors_destroy(w);
  free(yaml);
}

static void test_bad_inputs(const char* dir) {
  sy_tensors* w = NULL;
  CHECK(sy_tensors_init("model: {hidden_size: -4}", 1, &w) == SY_ERR_CONFIG, "negative hidden_size");
  CHECK(strstr(sy_last_error(), "hidden_size") != NULL, "message: %s", sy_last_error());
  CHECK(sy_tensors_load("/nonexistent/w.safetensors", &w) == SY_ERR_INPUT, "missing file");
  CHECK(strstr(sy_last_error(), "/nonexistent/w.safetensors") != NULL, "message: %s", sy_last_error());
  /* A weight map that lacks a tensor names it. */
  char* yaml = read_text(dir, "topk.yaml");
  sy_tensors* empty = NULL;
  OK(sy_tensors_create(&empty));
  sy_model* m = NULL;
  CHECK(sy_model_create(yaml, empty, NULL, &m) == SY_ERR_INPUT, "empty weights accepted");
  CHECK(strstr(sy_last_error(), "missing tensor 'stages.0.router.weight'") != NULL, "message: %s", sy_last_error());
  /* options.backend: an unknown name is an input error naming the option and the value. */
  sy_tensors* init = NULL;
  OK(sy_tensors_init(yaml, 1, &init));
  sy_model_options opts = {0};
  opts.backend = "tpu";
  CHECK(sy_model_create(yaml, init, &opts, &m) == SY_ERR_INPUT, "backend tpu accepted");
  CHECK(strstr(sy_last_error(), "options.backend 'tpu'") != NULL, "message: %s", sy_last_error());
  opts.backend = "cpu";
  OK(sy_model_create(yaml, init, &opts, &m));
  sy_model_destroy(m);
  sy_tensors_destroy(init);
  sy_tensors_destroy(empty);
  free(yaml);
}

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: test_capi CONFIG_DIR\n");
    return 2;
  }
  CHECK(sy_api_version() == SY_API_VERSION, "library version %d, header %d", sy_api_version(), SY_API_VERSION);
  CHECK(sy_blas_core() != NULL && sy_blas_core()[0] != 0, "no BLAS core name");
  test_config(argv[1], "topk.yaml", 0);
  test_config(argv[1], "dag.yaml", 0);
  test_config(argv[1], "cartesian.yaml", 0);
  test_config(argv[1], "dynamic.yaml", 1);
  test_config(argv[1], "combined.yaml", 1);
  test_bad_inputs(argv[1]);
  if (failures) {
    fprintf(stderr, "test_capi: %d failure(s)\n", failures);
    return 1;
  }
  printf("test_capi: all checks passed\n");
  return 0;
}
