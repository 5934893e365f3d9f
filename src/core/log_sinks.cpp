// The two sinks that ship: human-readable text and JSON lines.
#include <cstdio>
#include <string>

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

void append_json_string(std::string& out, std::string_view text) {
  out.push_back('"');
  for (char c : text) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
          char escaped[8];
          std::snprintf(escaped, sizeof escaped, "\\u%04x", static_cast<unsigned>(static_cast<unsigned char>(c)));
          out += escaped;
        } else {
          out.push_back(c);
        }
    }
  }
  out.push_back('"');
}

void emit(std::FILE* file, int fd, const std::string& text) {
  if (file != nullptr) {
    std::fwrite(text.data(), 1, text.size(), file);
    std::fflush(file);
  } else {
    platform::write_all(fd, text.data(), text.size());
  }
}

}  // namespace

TextLogSink::TextLogSink(std::FILE* out) : file_(out) {}
TextLogSink::TextLogSink(int fd) : fd_(fd) {}

void TextLogSink::write(const LogRecord& record) {
  std::string text;
  text.reserve(record.line.size() + record.module.size() + 96);
  append_timestamp(text, record.timestamp);
  text += ' ';
  std::string_view level = to_string(record.level);
  for (char c : level) text.push_back(static_cast<char>(c - 'a' + 'A'));
  text.append(6 - level.size(), ' ');
  text += record.module;
  if (!record.instance_id.empty()) {
    text += '[';
    // The tail: a UUID v7 starts with the time, which instances share.
    text += record.instance_id.substr(record.instance_id.size() > 8 ? record.instance_id.size() - 8 : 0);
    text += ']';
  }
  text += ' ';
  text += to_string(record.stream);
  text += record.continuation ? "+ " : ": ";
  text += record.line;
  text += '\n';
  std::lock_guard<std::mutex> lock(mutex_);
  emit(file_, fd_, text);
}

JsonLogSink::JsonLogSink(std::FILE* out) : file_(out) {}
JsonLogSink::JsonLogSink(int fd) : fd_(fd) {}

void JsonLogSink::write(const LogRecord& record) {
  std::string text;
  text.reserve(record.line.size() + record.module.size() + 160);
  text += "{\"timestamp\":\"";
  append_timestamp(text, record.timestamp);
  text += "\",\"level\":\"";
  text += to_string(record.level);
  text += "\",\"module\":";
  append_json_string(text, record.module);
  text += ",\"instance_id\":";
  append_json_string(text, record.instance_id);
  text += ",\"stream\":\"";
  text += to_string(record.stream);
  text += "\",\"continuation\":";
  text += record.continuation ? "true" : "false";
  text += ",\"line\":";
  append_json_string(text, record.line);
  text += "}\n";
  std::lock_guard<std::mutex> lock(mutex_);
  emit(file_, fd_, text);
}

}  // namespace modkit
