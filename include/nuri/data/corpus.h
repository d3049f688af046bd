// A run's data from a path: token files as they are, anything else as text with byte tokens; the
// corpus used when no path is given (text every Debian system has, so nothing is downloaded);
// the validation split; and the unigram baseline a first model should beat.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "nuri/data/token_file.h"

namespace nuri {

/// Whether `path` starts like a token file: the .npy magic, or llm.c's int32 header magic.
bool is_token_file(const std::string& path);

/// The tokens of `path` in `format`:
///   "auto": a token file (llm.c .bin or 1-D .npy, told apart by content) as it is; a .bin or
///           .npy file that is neither is refused (a headerless array must be named: uint16 or
///           uint32); anything else is text;
///   "text": byte-tokenized (ids 0..255, no end-of-text added), whatever its name;
///   "llmc", "npy": that format (its header checked);
///   "uint16", "uint32": a headerless array of that type (nanoGPT's train.bin).
/// With vocab_size > 0 every id must be below it (an error names the file and the id).
/// description (may be null) receives "PATH (N tokens)" or "PATH (N bytes of text, byte
/// tokens)".
std::shared_ptr<TokenFile> read_data(const std::string& path, int64_t vocab_size = 0,
                                     std::string* description = nullptr,
                                     const std::string& format = "auto");
/// The formats read_data takes.
const std::vector<std::string>& data_formats();

/// Whether `path` is a directory of shards written by `nuri tokenize` (it holds tokenize.json).
bool is_shard_dir(const std::string& path);
/// The `split` ("train" or "val") shards of such a directory, in order, as one token sequence
/// (each shard memory-mapped, none copied: TokenFile::join). With vocab_size > 0 the tokenizer
/// recorded in tokenize.json must not have more ids than the model (an error says so), and
/// every id is checked. Returns null when
/// the split has no shards; description (may be null) receives "DIR: N SPLIT shards (M
/// tokens, TOKENIZER)".
std::shared_ptr<TokenFile> read_shards(const std::string& dir, const std::string& split,
                                       int64_t vocab_size = 0,
                                       std::string* description = nullptr);

/// Refuses a shard directory that another tokenizer wrote: its tokenize.json must record the
/// byte tokenizer when `tokenizer` is "bytes", else a tokenizer.json whose SHA-256 is `sha256`
/// (`tokenizer`: that file's path, for the message). The error names both tokenizers.
void check_shard_tokenizer(const std::string& dir, const std::string& tokenizer,
                           const std::string& sha256);

/// Byte tokens of every regular file under /usr/share/common-licenses in name order, each
/// followed by a newline; where that directory holds under 100 kB, 300 kB of sentences drawn
/// from a small grammar with a fixed seed. description receives which one it was.
std::shared_ptr<TokenFile> default_corpus(std::string* description = nullptr);

/// (train, val): the last 10% of `data` (rounded down) held out, without copying; of packed
/// data (TokenFile::packed_window) the last tenth of its windows (at least one), both halves
/// starting where a window does.
std::pair<std::shared_ptr<TokenFile>, std::shared_ptr<TokenFile>> split_validation(
    const std::shared_ptr<TokenFile>& data);

/// Cross-entropy of `val` under the add-one smoothed unigram distribution of `train`, in nats per
/// token: what a model that ignores context can reach. Data of over 2^24 tokens is read in 256
/// evenly spaced runs of 2^16 tokens (an estimate, so a startup never reads a large corpus whole).
/// With a loss mask, of the trained tokens alone on both sides (NaN where `val` has none).
double unigram_baseline(const TokenFile& train, const TokenFile& val, int64_t vocab_size);

}  // namespace nuri
