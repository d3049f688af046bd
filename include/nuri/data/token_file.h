// Token files, memory-mapped. Three formats:
//  - llm.c's layout: a header of 256 int32 (magic, version, token count) then exactly that many
//    tokens. Magic 20240520 version 1 holds uint16 tokens (llm.c's GPT-2 files); magic 20240801
//    version 7 holds uint32 tokens (llm.c's Llama 3 files, and what nuri writes for vocabularies
//    of 65536 or more); magic 20240520 version 2 with uint32 tokens is read too (what earlier
//    nuri builds wrote). Bytes past the counted tokens are an error: several files joined, or
//    a header naming the wrong width, which would otherwise read as other tokens.
//  - a 1-D NumPy .npy array of any integer type (little-endian, C order): uint16 and uint32
//    mapped as they are, the others (int8 .. int64, uint8, uint64) read and converted, every
//    value checked to be a token id (not negative, below 2^32).
//  - a headerless array of uint16 or uint32 (nanoGPT's train.bin), only when the caller says
//    so (open_raw): without a header nothing tells it from any other file.
// Every inconsistency (bad magic, version, truncation, token id >= vocab_size) is an error that
// names the file and the byte offset.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace nuri {

constexpr int32_t kTokenFileMagic = 20240520;      // llm.c's uint16 files (version 1)
constexpr int32_t kTokenFileMagicWide = 20240801;  // llm.c's uint32 files (version 7)
constexpr int32_t kTokenFileVersionWide = 7;
/// The target id the loss skips (the model's cross-entropy ignore index).
constexpr int32_t kIgnoreIndex = -100;
constexpr int64_t kTokenFileHeaderBytes = 256 * 4;

class TokenFile {
 public:
  /// Maps and validates `path` (format by content: .npy magic, else llm.c layout). With
  /// vocab_size > 0 every token is checked to be below it.
  static std::shared_ptr<TokenFile> open(const std::string& path, int64_t vocab_size = 0);
  /// Maps a headerless little-endian array of `width`-byte tokens (2: uint16, 4: uint32), as
  /// nanoGPT's prepare scripts write train.bin; the file size must be a whole number of tokens.
  static std::shared_ptr<TokenFile> open_raw(const std::string& path, int width,
                                             int64_t vocab_size = 0);
  /// Wraps tokens already in memory (name is used in messages).
  static std::shared_ptr<TokenFile> from_tokens(std::vector<uint32_t> tokens,
                                                const std::string& name = "<memory>",
                                                int64_t vocab_size = 0);
  /// Tokens [start, start + n) of `file` without copying (keeps `file` alive).
  static std::shared_ptr<TokenFile> slice(std::shared_ptr<TokenFile> file, int64_t start,
                                          int64_t n);
  /// The tokens of `parts` one after another, without copying: each part stays mapped (a
  /// directory of shards, however large, takes no memory for its tokens). name: for messages.
  /// Every part already checked against a vocabulary keeps the joined file checked, and the
  /// parts' end_of_text() where they all have the same.
  static std::shared_ptr<TokenFile> join(std::vector<std::shared_ptr<TokenFile>> parts,
                                         const std::string& name);
  ~TokenFile();
  TokenFile(const TokenFile&) = delete;
  TokenFile& operator=(const TokenFile&) = delete;

  int64_t size() const { return n_; }
  uint32_t at(int64_t i) const {
    if (data32_) return data32_[i];
    if (data16_) return data16_[i];
    return at_joined(i);
  }
  /// out[k] = token (start + k) for k < n, as int32.
  void read(int64_t start, int64_t n, int32_t* out) const;
  /// "byte offset N": where token i is in its file (a .npy's own bytes, also when its values
  /// were converted), for messages; "" for joined and in-memory tokens.
  std::string byte_offset_str(int64_t i) const;
  const std::string& path() const { return path_; }
  /// Largest token id in the file.
  uint32_t max_token() const;
  /// What tells this data from other data, as 16 hex digits: a 64-bit hash of the token count
  /// and of every token (with its loss mask value), or, above kFingerprintWhole tokens, of
  /// kFingerprintSamples evenly spaced ones (as many pages read at most, not the whole file).
  /// Two files with the same tokens have the same fingerprint, wherever they lie; data of
  /// another count, or other tokens at any sampled place, has another one.
  std::string fingerprint() const;
  static constexpr int64_t kFingerprintWhole = int64_t(1) << 24;
  static constexpr int64_t kFingerprintSamples = int64_t(1) << 16;
  /// Throws, naming the first token at or above vocab_size, unless every token is below it. A
  /// file already checked against a bound as low (or a slice of one checked before slicing)
  /// returns at once; else it reads every token.
  void check_vocab(int64_t vocab_size) const;
  /// A loss mask beside the tokens (fine-tuning data: the prompt's tokens 0, the response's
  /// 1): the sampler makes a target whose token is masked out the ignore index (-100). One
  /// value per token, each 0 or 1; slices share it.
  void set_mask(std::vector<uint8_t> mask);
  bool has_mask() const { return mask_ != nullptr; }
  /// Whether token i is trained on (1 without a mask).
  bool trained(int64_t i) const { return mask_ == nullptr || mask_[i] != 0; }
  /// The sequence length the tokens were packed for (`nuri tokenize --pack T`: no row crosses
  /// a multiple of T, so no sample of T, or of a multiple of T, cuts one); 0: not packed. The
  /// sampler refuses other sequence lengths. A slice keeps it where it starts at a multiple.
  void set_packed_window(int64_t window);
  int64_t packed_window() const { return packed_window_; }
  /// The id that ends a document in these tokens (`nuri tokenize`'s end-of-text, recorded in
  /// tokenize.json), for a document mask (TrainConfig::document_mask); -1: unknown. Slices keep
  /// it.
  void set_end_of_text(int64_t id) { end_of_text_ = id; }
  int64_t end_of_text() const { return end_of_text_; }

 private:
  TokenFile() = default;
  /// Maps `path` read-only into map_ (throws naming it when it cannot, or is empty).
  const char* map_file(const std::string& path);
  /// at() of a joined file (the part holding token i), or of a slice of one (its parent's).
  uint32_t at_joined(int64_t i) const;
  /// Whether the tokens are in parts_ (join), or in a joined file's slice (parent_, base_).
  bool joined() const { return data16_ == nullptr && data32_ == nullptr; }

  std::string path_;
  void* map_ = nullptr;
  size_t map_bytes_ = 0;
  std::vector<uint32_t> owned_;
  std::shared_ptr<TokenFile> parent_;  // for slices
  int64_t base_ = 0;                   // a slice of a joined file: its first token's index there
  std::vector<std::shared_ptr<TokenFile>> parts_;  // a joined file's parts
  std::vector<int64_t> part_end_;                  // each part's end in the joined tokens
  int64_t data_offset_ = 0;  // byte offset of token 0 in the file
  int64_t file_elem_ = 2;    // bytes a token takes in the file (a converted .npy's: its type's)
  bool in_file_ = false;     // read from a file (or a slice of one): messages name byte offsets
  const uint16_t* data16_ = nullptr;
  const uint32_t* data32_ = nullptr;
  std::vector<uint8_t> owned_mask_;
  const uint8_t* mask_ = nullptr;
  int64_t packed_window_ = 0;
  int64_t end_of_text_ = -1;
  bool wide_ = false;
  int64_t n_ = 0;
  // A bound check_vocab found every token below (0: none); atomic, as Python may make two
  // trainers on one file at once.
  mutable std::atomic<int64_t> checked_below_{0};
};

/// Writes tokens in llm.c's layout: uint16 (20240520, version 1) when every id fits, else
/// uint32 (20240801, version 7).
void write_token_file(const std::string& path, const std::vector<uint32_t>& tokens);

/// Byte-level tokenizer: ids 0..255 are bytes, 256 is end-of-text. vocab_size() = 257.
class ByteTokenizer {
 public:
  static constexpr uint32_t kEndOfText = 256;
  static constexpr int64_t kVocabSize = 257;
  std::vector<uint32_t> encode(const std::string& text) const;
  /// Bytes back to text; end-of-text becomes "\n<|endoftext|>\n".
  std::string decode(const std::vector<int32_t>& tokens) const;
};

/// `bytes` with every ill-formed UTF-8 sequence replaced by U+FFFD (up to its longest valid
/// prefix, as Python's errors="replace" does): what a byte-level model's output can be shown as.
std::string valid_utf8(const std::string& bytes);

/// Reads a UTF-8/any text file and writes its byte tokens (plus a final end-of-text) in llm.c's
/// layout. Returns the number of tokens written.
int64_t text_file_to_tokens(const std::string& text_path, const std::string& token_path);

}  // namespace nuri
