// LogSink::write_batch: the default loops over write(); the shipped sinks
// write a batch with one write() and the same bytes as record by record; the
// backend hands a chunk of a module's lines to the sink as one batch.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <string>
#include <vector>

#include "modkit/modkit.hpp"
#include "test_support.hpp"

namespace {

using namespace modkit;

std::vector<LogRecord> sample_records() {
  static const std::string kInvalid = "bad \xff\xfe bytes \xc3\x28 end";
  std::vector<LogRecord> records(6);
  const char* const lines[] = {"first", "2025 ERROR quoted \"x\" and \\ back", "caf\xc3\xa9 \xe2\x80\xa8 \x01\x7f",
                               "", "tail of a cut line", ""};
  for (std::size_t i = 0; i < records.size(); ++i) {
    records[i].module = "billing";
    records[i].instance_id = "0190a1b2-c3d4-7e5f-8a6b-1234567890ab";
    records[i].stream = i % 2 ? LogStream::Stderr : LogStream::Stdout;
    records[i].level = static_cast<LogLevel>(i % 5);
    records[i].line = lines[i];
    // Two timestamps, so a cached timestamp text must be redone.
    records[i].timestamp = std::chrono::system_clock::time_point(std::chrono::milliseconds(1700000000123LL + (i / 3) * 1001));
  }
  records[4].continuation = true;
  records[5].line = kInvalid;
  // Only the instance changes from the record before: what a sink keeps
  // from one record to the next must notice.
  records[5].stream = records[4].stream;
  records[5].instance_id = "";
  return records;
}

// One message per write(): a SOCK_SEQPACKET socket keeps write boundaries.
struct Seqpacket {
  Seqpacket() { EXPECT_EQ(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, fds), 0); }
  ~Seqpacket() {
    close(fds[0]);
    close(fds[1]);
  }
  // Every message waiting, each as written.
  std::vector<std::string> messages() {
    std::vector<std::string> result;
    std::vector<char> buffer(1 << 20);
    for (;;) {
      ssize_t got = recv(fds[1], buffer.data(), buffer.size(), MSG_DONTWAIT);
      if (got <= 0) break;
      result.emplace_back(buffer.data(), static_cast<std::size_t>(got));
    }
    return result;
  }
  int fds[2] = {-1, -1};
};

std::string concatenated(const std::vector<std::string>& parts) {
  std::string all;
  for (const auto& part : parts) all += part;
  return all;
}

template <typename SinkType>
void check_one_write_per_batch_and_same_bytes(bool through_file) {
  const auto records = sample_records();
  Seqpacket single, batch;
  std::FILE* single_file = through_file ? fdopen(dup(single.fds[0]), "w") : nullptr;
  std::FILE* batch_file = through_file ? fdopen(dup(batch.fds[0]), "w") : nullptr;
  {
    SinkType one_by_one = through_file ? SinkType(single_file) : SinkType(single.fds[0]);
    for (const auto& record : records) one_by_one.write(record);
    SinkType batched = through_file ? SinkType(batch_file) : SinkType(batch.fds[0]);
    batched.write_batch(records.data(), records.size());
  }
  if (through_file) {
    std::fclose(single_file);
    std::fclose(batch_file);
  }
  const auto singles = single.messages();
  const auto batches = batch.messages();
  EXPECT_EQ(singles.size(), records.size());
  ASSERT_EQ(batches.size(), 1u) << "the batch took " << batches.size() << " writes";
  EXPECT_EQ(batches[0], concatenated(singles));
}

TEST(LogSinkBatch, TextSinkWritesABatchOnceWithTheSameBytes) {
  check_one_write_per_batch_and_same_bytes<TextLogSink>(false);
}
TEST(LogSinkBatch, TextSinkOnAFileWritesABatchOnceWithTheSameBytes) {
  check_one_write_per_batch_and_same_bytes<TextLogSink>(true);
}
TEST(LogSinkBatch, JsonSinkWritesABatchOnceWithTheSameBytes) {
  check_one_write_per_batch_and_same_bytes<JsonLogSink>(false);
}
TEST(LogSinkBatch, JsonSinkOnAFileWritesABatchOnceWithTheSameBytes) {
  check_one_write_per_batch_and_same_bytes<JsonLogSink>(true);
}

// What the host wrote to the FILE before the batch comes out before it.
TEST(LogSinkBatch, FileFormFlushesTheHostsTextBeforeTheBatch) {
  Seqpacket socket;
  std::FILE* file = fdopen(dup(socket.fds[0]), "w");
  ASSERT_NE(file, nullptr);
  std::fputs("host text\n", file);
  const auto records = sample_records();
  {
    JsonLogSink sink(file);
    sink.write_batch(records.data(), records.size());
  }
  std::fclose(file);
  const auto messages = socket.messages();
  ASSERT_EQ(messages.size(), 2u);
  EXPECT_EQ(messages[0], "host text\n");
  EXPECT_EQ(messages[1].substr(0, 14), "{\"timestamp\":\"");
}

// A sink that only implements write() gets every record of a batch, in order.
TEST(LogSinkBatch, DefaultWriteBatchWritesEachRecordInOrder) {
  struct Lines final : LogSink {
    void write(const LogRecord& record) override { lines.emplace_back(record.line); }
    std::vector<std::string> lines;
  } sink;
  const auto records = sample_records();
  static_cast<LogSink&>(sink).write_batch(records.data(), records.size());
  std::vector<std::string> expected;
  for (const auto& record : records) expected.emplace_back(record.line);
  EXPECT_EQ(sink.lines, expected);
}

// Through the real backend: a module's write of 100 lines (one write(),
// below PIPE_BUF, so one read()) reaches the sink as one batch of 100.
TEST(LogSinkBatch, AModulesChunkOfLinesIsOneBatch) {
  struct Batches final : LogSink {
    void write(const LogRecord& record) override {
      if (record.stream == LogStream::Stdout) ADD_FAILURE() << "stdout line outside a batch: " << record.line;
    }
    void write_batch(const LogRecord* records, std::size_t count) override {
      std::lock_guard<std::mutex> lock(mutex);
      std::vector<std::string> batch;
      for (std::size_t i = 0; i < count; ++i) {
        EXPECT_EQ(records[i].stream, LogStream::Stdout);
        batch.emplace_back(records[i].line);
      }
      batches.push_back(std::move(batch));
    }
    std::mutex mutex;
    std::vector<std::vector<std::string>> batches;
  };
  auto sink = std::make_shared<Batches>();
  std::mutex mutex;
  std::condition_variable exited;
  bool done = false;
  LocalProcessOptions options;
  options.on_exit = [&](const InstanceHandle&, const ExitStatus&) {
    std::lock_guard<std::mutex> lock(mutex);
    done = true;
    exited.notify_all();
  };
  CancellationToken token;
  {
    LocalProcessBackend backend(token, sink, options);
    auto handle = backend.spawn_instance(modkit::testing::child_config("flood", {"flood", "100", "20"}));
    ASSERT_TRUE(handle.has_value());
    std::unique_lock<std::mutex> lock(mutex);
    ASSERT_TRUE(exited.wait_for(lock, std::chrono::seconds(10), [&] { return done; }));
  }
  std::lock_guard<std::mutex> lock(sink->mutex);
  ASSERT_EQ(sink->batches.size(), 1u);
  ASSERT_EQ(sink->batches[0].size(), 100u);
  EXPECT_EQ(sink->batches[0][0], std::string(19, 'y'));
}

}  // namespace
