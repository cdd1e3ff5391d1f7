// Runs a GGUF through llama.cpp teacher-forced and prints every position's logits as JSON.
//
// For the fixtures' spread files (fixtures/moe/llamacpp-spread.json, made by
// tools/llamacpp_spread.py): each line of standard input is one prompt, its token ids separated
// by spaces; each prompt runs in a fresh context as one batch with logits requested at every
// position (as baicai's `forward(ids, cache, Logits::All)`), flash attention off, default (F16)
// KV cache unless `kv=f32`. Output on standard output:
//   {"prompts": [{"ids": [...], "logits": [[n_vocab floats], ...one row per position]}, ...]}
// Floats are printed with 9 significant digits, which reads back as the same float32.
//
// Build against the shared libraries of a llama.cpp build tree (BUILD_SHARED_LIBS=ON, as
// build-native of llama-cpp-python 0.3.36's vendored llama.cpp, commit 0c1e570):
//
//   LL=/work/llamacpp/llama_cpp_python-0.3.36/vendor/llama.cpp
//   g++ -O2 -std=c++17 tools/llamacpp_fixture_logits.cpp -I$LL/include -I$LL/ggml/include \
//       -L$LL/build-native/bin -lllama -lggml -lggml-base -Wl,-rpath,$LL/build-native/bin \
//       -o /tmp/llamacpp_fixture_logits
//   echo "5 17 200" | /tmp/llamacpp_fixture_logits MODEL.gguf [threads=2] [kv=f16|f32]

#include "llama.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

// Runs one prompt in a fresh context; prints its JSON object. Returns false on a llama.cpp error.
static bool run_prompt(llama_model * model, llama_context_params cp, const std::vector<llama_token> & ids,
                       int n_vocab, bool first) {
    cp.n_ctx = 256 * ((ids.size() + 255) / 256);
    cp.n_batch = cp.n_ubatch = (uint32_t) cp.n_ctx;
    llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) {
        std::fprintf(stderr, "failed to create a context\n");
        return false;
    }
    llama_batch batch = llama_batch_init((int32_t) ids.size(), 0, 1);
    for (size_t i = 0; i < ids.size(); ++i) {
        batch.token[i] = ids[i];
        batch.pos[i] = (llama_pos) i;
        batch.n_seq_id[i] = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i] = 1;
    }
    batch.n_tokens = (int32_t) ids.size();
    const int rc = llama_decode(ctx, batch);
    if (rc != 0) {
        std::fprintf(stderr, "llama_decode failed: %d\n", rc);
        llama_batch_free(batch);
        llama_free(ctx);
        return false;
    }
    std::printf("%s{\"ids\": [", first ? "" : ",\n");
    for (size_t i = 0; i < ids.size(); ++i) std::printf("%s%d", i ? ", " : "", ids[i]);
    std::printf("], \"logits\": [");
    for (size_t i = 0; i < ids.size(); ++i) {
        const float * row = llama_get_logits_ith(ctx, (int32_t) i);
        std::printf("%s[", i ? ",\n" : "\n");
        for (int v = 0; v < n_vocab; ++v) std::printf("%s%.9g", v ? ", " : "", row[v]);
        std::printf("]");
    }
    std::printf("]}");
    llama_batch_free(batch);
    llama_free(ctx);
    return true;
}

int main(int argc, char ** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s MODEL.gguf [threads] [kv=f16|f32] < prompts\n", argv[0]);
        return 2;
    }
    const int n_thread = argc > 2 ? std::atoi(argv[2]) : 2;
    const bool kv_f32 = argc > 3 && std::strcmp(argv[3], "kv=f32") == 0;

    llama_backend_init();
    llama_model * model = llama_model_load_from_file(argv[1], llama_model_default_params());
    if (!model) {
        std::fprintf(stderr, "failed to load %s\n", argv[1]);
        return 1;
    }
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));

    llama_context_params cp = llama_context_default_params();
    cp.n_threads = cp.n_threads_batch = n_thread;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    if (kv_f32) cp.type_k = cp.type_v = GGML_TYPE_F32;

    std::printf("{\"prompts\": [");
    std::string line;
    bool first = true, ok = true;
    while (ok && std::getline(std::cin, line)) {
        std::istringstream in(line);
        std::vector<llama_token> ids;
        for (llama_token t; in >> t;) ids.push_back(t);
        if (ids.empty()) continue;
        ok = run_prompt(model, cp, ids, n_vocab, first);
        first = false;
    }
    std::printf("]}\n");

    llama_model_free(model);
    llama_backend_free();
    return ok ? 0 : 1;
}
