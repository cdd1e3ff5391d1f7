// Runs a synthetic GGUF through llama.cpp and checks that every logit is finite.
//
// The synthetic files have no tokenizer (`tokenizer.ggml.model = "none"`), so llama-completion
// cannot be used; this feeds seeded random token ids instead: a prefill batch, then a few greedy
// decode steps, printing logit statistics per step. Build against a llama.cpp build tree (see
// README.md):
//
//   g++ -O2 -std=c++17 -fopenmp llamacpp_logits_check.cpp -I$LLAMA/include -I$LLAMA/ggml/include \
//       $LLAMA/build/src/libllama.a $LLAMA/build/ggml/src/libggml.a \
//       $LLAMA/build/ggml/src/libggml-cpu.a $LLAMA/build/ggml/src/libggml-base.a -lpthread \
//       -o llamacpp_logits_check
//   ./llamacpp_logits_check MODEL.gguf [n_prompt=32] [n_decode=8] [threads=2]

#include "llama.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

// Logit statistics of the last row; returns the argmax, or -1 if any logit is not finite.
static int report(const char * what, const float * logits, int n_vocab) {
    double sum = 0, sum_sq = 0;
    float lo = INFINITY, hi = -INFINITY;
    int argmax = 0, bad = 0;
    for (int i = 0; i < n_vocab; ++i) {
        const float v = logits[i];
        if (!std::isfinite(v)) { ++bad; continue; }
        sum += v; sum_sq += (double) v * v;
        if (v < lo) lo = v;
        if (v > hi) { hi = v; argmax = i; }
    }
    const double mean = sum / n_vocab;
    std::printf("%-10s min %8.3f max %8.3f mean %8.4f std %7.4f argmax %6d non-finite %d\n",
                what, lo, hi, mean, std::sqrt(sum_sq / n_vocab - mean * mean), argmax, bad);
    return bad ? -1 : argmax;
}

int main(int argc, char ** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s MODEL.gguf [n_prompt] [n_decode] [threads]\n", argv[0]);
        return 2;
    }
    const int n_prompt = argc > 2 ? std::atoi(argv[2]) : 32;
    const int n_decode = argc > 3 ? std::atoi(argv[3]) : 8;
    const int n_thread = argc > 4 ? std::atoi(argv[4]) : 2;

    llama_backend_init();
    llama_model * model = llama_model_load_from_file(argv[1], llama_model_default_params());
    if (!model) { std::fprintf(stderr, "failed to load %s\n", argv[1]); return 1; }
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));

    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = n_prompt + n_decode + 16;
    cp.n_batch = n_prompt;
    cp.n_threads = cp.n_threads_batch = n_thread;
    llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) { std::fprintf(stderr, "failed to create a context\n"); return 1; }

    std::mt19937 rng(1234);
    std::vector<llama_token> prompt(n_prompt);
    for (auto & t : prompt) t = (llama_token) (rng() % n_vocab);
    if (llama_decode(ctx, llama_batch_get_one(prompt.data(), n_prompt)) != 0) {
        std::fprintf(stderr, "prefill failed\n");
        return 1;
    }
    int tok = report("prefill", llama_get_logits_ith(ctx, -1), n_vocab);
    for (int i = 0; i < n_decode && tok >= 0; ++i) {
        llama_token t = tok;
        if (llama_decode(ctx, llama_batch_get_one(&t, 1)) != 0) {
            std::fprintf(stderr, "decode step %d failed\n", i);
            return 1;
        }
        char what[32];
        std::snprintf(what, sizeof what, "decode %d", i);
        tok = report(what, llama_get_logits_ith(ctx, -1), n_vocab);
    }
    std::printf(tok >= 0 ? "all logits finite\n" : "NON-FINITE LOGITS\n");

    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return tok >= 0 ? 0 : 1;
}
