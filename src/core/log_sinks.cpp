// The two sinks that ship: human-readable text and JSON lines.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>

#include "core/utf8.hpp"
#include "modkit/modkit.hpp"
#include "platform/system.hpp"

namespace modkit {
namespace {

// "2026-11-27T17:34:10.123Z". Computed by hand (days to civil date, after
// Howard Hinnant's algorithm) because gmtime_r and gmtime_s differ by platform.
void append_timestamp(std::string& out, std::chrono::system_clock::time_point when) {
  using namespace std::chrono;
  auto ms_total = duration_cast<milliseconds>(when.time_since_epoch()).count();
  long long days = ms_total / 86400000;
  long long ms_of_day = ms_total % 86400000;
  if (ms_of_day < 0) {
    ms_of_day += 86400000;
    --days;
  }
  long long z = days + 719468;
  long long era = (z >= 0 ? z : z - 146096) / 146097;
  long long doe = z - era * 146097;
  long long yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  long long day_of_year = doe - (365 * yoe + yoe / 4 - yoe / 100);
  long long mp = (5 * day_of_year + 2) / 153;
  long long day = day_of_year - (153 * mp + 2) / 5 + 1;
  long long month = mp < 10 ? mp + 3 : mp - 9;
  long long year = yoe + era * 400 + (month <= 2 ? 1 : 0);
  char text[96];
  std::snprintf(text, sizeof text, "%04lld-%02lld-%02lldT%02lld:%02lld:%02lld.%03lldZ", year, month, day,
                ms_of_day / 3600000, ms_of_day / 60000 % 60, ms_of_day / 1000 % 60, ms_of_day % 1000);
  out += text;
}

constexpr char kHex[] = "0123456789abcdef";

// Word-at-a-time tests (Bit Twiddling Hacks "hasless"/"haszero"): nonzero iff
// some byte of `x` is below `n` (n <= 128) / equal to `c`. Exact as booleans.
constexpr std::uint64_t kOnes = 0x0101010101010101ULL;
constexpr std::uint64_t kHighs = 0x8080808080808080ULL;
inline std::uint64_t any_below(std::uint64_t x, unsigned n) { return (x - kOnes * n) & ~x & kHighs; }
inline std::uint64_t any_equal(std::uint64_t x, unsigned char c) {
  std::uint64_t y = x ^ (kOnes * c);
  return (y - kOnes) & ~y & kHighs;
}

// An escape being built: at most "\u{hh}" or "\u2028".
struct Escaped {
  char text[8];
  std::size_t size = 0;
  void add(const char* s) {
    while (*s != '\0') text[size++] = *s++;
  }
  void hex2(unsigned char byte) {
    text[size++] = kHex[byte >> 4];
    text[size++] = kHex[byte & 0xF];
  }
};

// Byte k of the sequence at p, or 0 past the end.
inline unsigned char byte_at(const char* p, const char* end, std::ptrdiff_t k) {
  return end - p > k ? static_cast<unsigned char>(p[k]) : 0;
}

// The same tests for an all-ASCII word (the common case), cheaper: with no
// high bit set, "below 0x20" and "equal c" need no ~w mask, and w + 1 sets a
// high bit only for DEL.
inline bool ascii_word_may_need(std::uint64_t w, unsigned char c1, unsigned char c2) {
  return (((w - kOnes * 0x20) | (w + kOnes) | ((w ^ (kOnes * c1)) - kOnes) | ((w ^ (kOnes * c2)) - kOnes)) & kHighs) != 0;
}

// Text format: "\\", "\n", "\r", and "\u{hh}" for every other C0 control but
// TAB, for DEL and for the C1 controls U+0080..U+009F (UTF-8 C2 80..C2 9F).
struct TextEscape {
  static bool word_may_need(std::uint64_t w) {
    // TAB passes this filter; byte_may_need lets it through.
    if ((w & kHighs) == 0) return ascii_word_may_need(w, '\\', '\\');  // below 0x20, DEL, backslash
    return (any_below(w, 0x20) | any_equal(w, '\\') | any_equal(w, 0x7F) | any_equal(w, 0xC2)) != 0;
  }
  static bool byte_may_need(unsigned char c) {
    return (c < 0x20 && c != '\t') || c == '\\' || c == 0x7F || c == 0xC2;
  }
  // Fills `e` with the escape of the sequence at p and returns the bytes it
  // stands for, or 0 if the sequence is ordinary after all.
  static std::size_t escape(const char* p, const char* end, Escaped& e) {
    unsigned char c = byte_at(p, end, 0);
    if (c == 0xC2) {
      unsigned char next = byte_at(p, end, 1);
      if (next < 0x80 || next > 0x9F) return 0;
      e.add("\\u{");
      e.hex2(next);
      e.add("}");
      return 2;
    }
    if (c == '\\') {
      e.add("\\\\");
    } else if (c == '\n') {
      e.add("\\n");
    } else if (c == '\r') {
      e.add("\\r");
    } else {
      e.add("\\u{");
      e.hex2(c);
      e.add("}");
    }
    return 1;
  }
};

// JSON (RFC 8259) plus DEL, the C1 controls, and U+2028/U+2029, which
// JavaScript before ES2019 takes for line terminators inside a string.
struct JsonEscape {
  static bool word_may_need(std::uint64_t w) {
    if ((w & kHighs) == 0) return ascii_word_may_need(w, '"', '\\');
    return (any_below(w, 0x20) | any_equal(w, '"') | any_equal(w, '\\') | any_equal(w, 0x7F) | any_equal(w, 0xC2) |
            any_equal(w, 0xE2)) != 0;
  }
  static bool byte_may_need(unsigned char c) {
    return c < 0x20 || c == '"' || c == '\\' || c == 0x7F || c == 0xC2 || c == 0xE2;
  }
  static std::size_t escape(const char* p, const char* end, Escaped& e) {
    unsigned char c = byte_at(p, end, 0);
    switch (c) {
      case '"': e.add("\\\""); return 1;
      case '\\': e.add("\\\\"); return 1;
      case '\n': e.add("\\n"); return 1;
      case '\r': e.add("\\r"); return 1;
      case '\t': e.add("\\t"); return 1;
      case 0xC2:
        if (byte_at(p, end, 1) < 0x80 || byte_at(p, end, 1) > 0x9F) return 0;
        e.add("\\u00");
        e.hex2(byte_at(p, end, 1));
        return 2;
      case 0xE2:
        if (byte_at(p, end, 1) != 0x80 || (byte_at(p, end, 2) != 0xA8 && byte_at(p, end, 2) != 0xA9)) return 0;
        e.add(byte_at(p, end, 2) == 0xA8 ? "\\u2028" : "\\u2029");
        return 3;
      default:
        e.add("\\u00");
        e.hex2(c);
        return 1;
    }
  }
};

// Appends `text` (valid UTF-8) escaped: clean 8-byte words are skipped with
// one test each and runs of ordinary bytes are copied in one append, since
// this runs on every line of every child.
template <typename Escape>
void append_escaped(std::string& out, std::string_view text) {
  const char* p = text.data();
  const char* end = p + text.size();
  const char* run = p;
  while (p < end) {
    if (end - p >= 8) {
      std::uint64_t word;
      std::memcpy(&word, p, 8);
      if (!Escape::word_may_need(word)) {
        p += 8;
        continue;
      }
    }
    // Look at this word (or the tail) byte by byte; an escape may end past it.
    const char* stop = end - p >= 8 ? p + 8 : end;
    while (p < stop) {
      Escaped e;
      std::size_t used = Escape::byte_may_need(static_cast<unsigned char>(*p)) ? Escape::escape(p, end, e) : 0;
      if (used == 0) {
        ++p;
        continue;
      }
      out.append(run, static_cast<std::size_t>(p - run));
      out.append(e.text, e.size);
      p += used;
      run = p;
    }
  }
  out.append(run, static_cast<std::size_t>(end - run));
}

// Invalid UTF-8 becomes U+FFFD first, so the escapers see whole sequences.
template <typename Escape>
void append_field(std::string& out, std::string_view text, std::string& scratch) {
  append_escaped<Escape>(out, utf8::sanitize(text, scratch));
}

void append_json_string(std::string& out, std::string_view text, std::string& scratch) {
  out.push_back('"');
  append_field<JsonEscape>(out, text, scratch);
  out.push_back('"');
}

void emit(std::FILE* file, int fd, const std::string& text) {
  if (file != nullptr) {
    platform::write_all(file, text.data(), text.size());
  } else {
    platform::write_all(fd, text.data(), text.size());
  }
}

// The timestamp text of the previous record: the records of one batch share
// the time their chunk was read, and snprintf costs more than the rest of a
// short record's formatting.
class TimestampCache {
 public:
  void append(std::string& out, std::chrono::system_clock::time_point when) {
    if (!valid_ || when != when_) {
      text_.clear();
      append_timestamp(text_, when);
      when_ = when;
      valid_ = true;
    }
    out += text_;
  }

 private:
  std::string text_;
  std::chrono::system_clock::time_point when_{};
  bool valid_ = false;
};

void format_text(std::string& text, const LogRecord& record, TimestampCache& time, std::string& scratch) {
  time.append(text, record.timestamp);
  text += ' ';
  std::string_view level = to_string(record.level);
  for (char c : level) text.push_back(static_cast<char>(c - 'a' + 'A'));
  text.append(6 - level.size(), ' ');
  append_field<TextEscape>(text, record.module, scratch);
  if (!record.instance_id.empty()) {
    text += '[';
    // The tail: a UUID v7 starts with the time, which instances share. Start
    // it on a character, not inside a multi-byte sequence.
    std::string_view id = record.instance_id;
    std::size_t start = id.size() > 8 ? id.size() - 8 : 0;
    for (int back = 0; back < 3 && start > 0 && (static_cast<unsigned char>(id[start]) & 0xC0) == 0x80; ++back) --start;
    append_field<TextEscape>(text, id.substr(start), scratch);
    text += ']';
  }
  text += ' ';
  text += to_string(record.stream);
  text += record.continuation ? "+ " : ": ";
  append_field<TextEscape>(text, record.line, scratch);
  text += '\n';
}

// The fields a batch's records share (module, instance, stream), escaped
// once: per record only the level, the continuation flag and the line change.
class JsonMiddle {
 public:
  const std::string& get(const LogRecord& record, std::string& scratch) {
    if (!valid_ || record.stream != stream_ || !same(record.module, module_) || !same(record.instance_id, id_)) {
      text_.assign("\",\"module\":");
      append_json_string(text_, record.module, scratch);
      text_ += ",\"instance_id\":";
      append_json_string(text_, record.instance_id, scratch);
      text_ += ",\"stream\":\"";
      text_ += to_string(record.stream);
      text_ += "\",\"continuation\":";
      module_ = record.module;
      id_ = record.instance_id;
      stream_ = record.stream;
      valid_ = true;
    }
    return text_;
  }

 private:
  static bool same(std::string_view a, std::string_view b) {
    return a.size() == b.size() && (a.data() == b.data() || a == b);
  }
  // Views into the records of the current call only: reset per call.
  std::string_view module_, id_;
  LogStream stream_ = LogStream::Library;
  bool valid_ = false;
  std::string text_;
};

void format_json(std::string& text, const LogRecord& record, TimestampCache& time, JsonMiddle& middle,
                 std::string& scratch) {
  text += "{\"timestamp\":\"";
  time.append(text, record.timestamp);
  text += "\",\"level\":\"";
  text += to_string(record.level);
  text += middle.get(record, scratch);
  text += record.continuation ? std::string_view("true,\"line\":") : std::string_view("false,\"line\":");
  append_json_string(text, record.line, scratch);
  text += "}\n";
}

// Room for the records before escaping; escapes may still grow the buffer.
std::size_t estimate(const LogRecord* records, std::size_t count, std::size_t per_record) {
  std::size_t bytes = 0;
  for (std::size_t i = 0; i < count; ++i) bytes += records[i].line.size() + records[i].module.size() + per_record;
  return bytes;
}

// One formatting buffer per thread, kept between calls: a reader formats a
// batch per read() and would otherwise allocate for each.
std::string& thread_buffer() {
  thread_local std::string buffer;
  buffer.clear();
  return buffer;
}

// A buffer that grew for one huge batch is not kept.
void release_if_huge(std::string& buffer) {
  if (buffer.capacity() > (std::size_t{512} << 10)) std::string().swap(buffer);
}

}  // namespace

TextLogSink::TextLogSink(std::FILE* out) : file_(out) {}
TextLogSink::TextLogSink(int fd) : fd_(fd) {}

void TextLogSink::write(const LogRecord& record) { write_batch(&record, 1); }

void TextLogSink::write_batch(const LogRecord* records, std::size_t count) {
  std::string& text = thread_buffer();
  text.reserve(estimate(records, count, 96));
  TimestampCache time;
  std::string scratch;
  for (std::size_t i = 0; i < count; ++i) format_text(text, records[i], time, scratch);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    emit(file_, fd_, text);
  }
  release_if_huge(text);
}

JsonLogSink::JsonLogSink(std::FILE* out) : file_(out) {}
JsonLogSink::JsonLogSink(int fd) : fd_(fd) {}

void JsonLogSink::write(const LogRecord& record) { write_batch(&record, 1); }

void JsonLogSink::write_batch(const LogRecord* records, std::size_t count) {
  std::string& text = thread_buffer();
  text.reserve(estimate(records, count, 160));
  TimestampCache time;
  JsonMiddle middle;
  std::string scratch;
  for (std::size_t i = 0; i < count; ++i) format_json(text, records[i], time, middle, scratch);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    emit(file_, fd_, text);
  }
  release_if_huge(text);
}

}  // namespace modkit
