// Prints llama.cpp's tokenization and detokenization of many texts, for baicai-tokenizer's
// differential tests. Built and driven by tools/tokenizer_llamacpp_fixture.py.
//
// Usage: tokenizer_llamacpp_dump MODEL.gguf < texts > lines
//   stdin:  texts separated by NUL bytes
//   stdout: line 1: {"eog":[...], "bos":id, "eos":id, "eot":id}
//           then one JSON line per text: {"plain":[...], "parsed":[...], "with_special":[...],
//           "decoded":"<hex>", "decoded_skip":"<hex>"}
//   plain:        llama_tokenize(add_special = false, parse_special = false)
//   parsed:       llama_tokenize(add_special = false, parse_special = true)
//   with_special: llama_tokenize(add_special = true,  parse_special = true)
//   decoded:      llama_detokenize(with_special, remove_special = false, unparse_special = true)
//   decoded_skip: llama_detokenize(with_special, remove_special = true,  unparse_special = false)
#include "llama.h"

#include <cstdio>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

static std::vector<llama_token> tokenize(const llama_vocab * vocab, const std::string & text,
                                         bool add_special, bool parse_special) {
    std::vector<llama_token> ids(text.size() + 8);
    int n = llama_tokenize(vocab, text.data(), (int) text.size(), ids.data(), (int) ids.size(),
                           add_special, parse_special);
    if (n < 0) {
        ids.resize(-n);
        n = llama_tokenize(vocab, text.data(), (int) text.size(), ids.data(), (int) ids.size(),
                           add_special, parse_special);
    }
    ids.resize(n);
    return ids;
}

static std::string detokenize(const llama_vocab * vocab, const std::vector<llama_token> & ids,
                              bool remove_special, bool unparse_special) {
    std::string out(ids.size() * 16 + 16, '\0');
    int n = llama_detokenize(vocab, ids.data(), (int) ids.size(), out.data(), (int) out.size(),
                             remove_special, unparse_special);
    if (n < 0) {
        out.resize(-n);
        n = llama_detokenize(vocab, ids.data(), (int) ids.size(), out.data(), (int) out.size(),
                             remove_special, unparse_special);
    }
    out.resize(n);
    return out;
}

static void print_ids(const char * key, const std::vector<llama_token> & ids) {
    std::printf("\"%s\":[", key);
    for (size_t i = 0; i < ids.size(); i++) {
        std::printf(i ? ",%d" : "%d", ids[i]);
    }
    std::printf("]");
}

static void print_hex(const char * key, const std::string & s) {
    std::printf("\"%s\":\"", key);
    for (unsigned char c : s) {
        std::printf("%02x", c);
    }
    std::printf("\"");
}

int main(int argc, char ** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s MODEL.gguf < NUL-separated texts\n", argv[0]);
        return 2;
    }
    llama_log_set([](ggml_log_level, const char *, void *) {}, nullptr);
    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    mp.vocab_only = true;
    llama_model * model = llama_model_load_from_file(argv[1], mp);
    if (!model) {
        std::fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    const llama_vocab * vocab = llama_model_get_vocab(model);

    std::printf("{\"eog\":[");
    bool first = true;
    for (llama_token id = 0; id < llama_vocab_n_tokens(vocab); id++) {
        if (llama_vocab_is_eog(vocab, id)) {
            std::printf(first ? "%d" : ",%d", id);
            first = false;
        }
    }
    std::printf("],\"bos\":%d,\"eos\":%d,\"eot\":%d}\n", llama_vocab_bos(vocab), llama_vocab_eos(vocab),
                llama_vocab_eot(vocab));

    std::string all((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
    size_t start = 0;
    while (start <= all.size()) {
        size_t end = all.find('\0', start);
        if (end == std::string::npos) {
            end = all.size();
        }
        const std::string text = all.substr(start, end - start);
        const auto plain = tokenize(vocab, text, false, false);
        const auto parsed = tokenize(vocab, text, false, true);
        const auto with_special = tokenize(vocab, text, true, true);
        std::printf("{");
        print_ids("plain", plain);
        std::printf(",");
        print_ids("parsed", parsed);
        std::printf(",");
        print_ids("with_special", with_special);
        std::printf(",");
        print_hex("decoded", detokenize(vocab, with_special, false, true));
        std::printf(",");
        print_hex("decoded_skip", detokenize(vocab, with_special, true, false));
        std::printf("}\n");
        if (end == all.size()) {
            break;
        }
        start = end + 1;
    }
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
