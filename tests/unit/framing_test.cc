#include "net/framing.h"

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <capnp/any.h>
#include <gtest/gtest.h>
#include <kj/exception.h>

#include "net/protocol.capnp.h"

namespace hq::net {
namespace {

std::vector<uint8_t> bytes_of(const kj::Array<capnp::word>& words) {
  auto bytes = words.asBytes();
  return {bytes.begin(), bytes.end()};
}

// Three requests of different shapes; the last spans many segments.
std::vector<uint8_t> three_messages() {
  std::vector<uint8_t> stream;
  {
    capnp::MallocMessageBuilder builder;
    builder.initRoot<wire::ClientRequest>().setWorkerInfo(7);
    auto bytes = bytes_of(encode(builder));
    stream.insert(stream.end(), bytes.begin(), bytes.end());
  }
  {
    capnp::MallocMessageBuilder builder;
    builder.initRoot<wire::ClientRequest>().setJobList();
    auto bytes = bytes_of(encode(builder));
    stream.insert(stream.end(), bytes.begin(), bytes.end());
  }
  {
    capnp::MallocMessageBuilder builder(8, capnp::AllocationStrategy::FIXED_SIZE);
    auto job = builder.initRoot<wire::ClientRequest>().initSubmit();
    job.setName("a job with a name long enough to need its own segment");
    auto ranges = job.initTaskIds(20);
    for (uint32_t i = 0; i < 20; ++i) {
      ranges[i].setStart(i * 10);
      ranges[i].setEnd(i * 10 + 5);
      ranges[i].setStep(1);
    }
    EXPECT_GT(builder.getSegmentsForOutput().size(), 1u);
    auto bytes = bytes_of(encode(builder));
    stream.insert(stream.end(), bytes.begin(), bytes.end());
  }
  return stream;
}

void expect_three_messages(std::vector<Message>& messages) {
  ASSERT_EQ(messages.size(), 3u);
  auto first = messages[0].root<wire::ClientRequest>();
  ASSERT_EQ(first.which(), wire::ClientRequest::WORKER_INFO);
  EXPECT_EQ(first.getWorkerInfo(), 7u);
  EXPECT_EQ(messages[1].root<wire::ClientRequest>().which(), wire::ClientRequest::JOB_LIST);
  auto third = messages[2].root<wire::ClientRequest>();
  ASSERT_EQ(third.which(), wire::ClientRequest::SUBMIT);
  EXPECT_EQ(std::string(third.getSubmit().getName().cStr()),
            "a job with a name long enough to need its own segment");
  auto ranges = third.getSubmit().getTaskIds();
  ASSERT_EQ(ranges.size(), 20u);
  EXPECT_EQ(ranges[19].getStart(), 190u);
  EXPECT_EQ(ranges[19].getEnd(), 195u);
}

void drain(FrameDecoder& decoder, std::vector<Message>& out) {
  while (auto message = decoder.next()) out.push_back(std::move(*message));
}

// A segment table: count-1, then sizes, padded to a word.
std::vector<uint8_t> table(const std::vector<uint32_t>& sizes) {
  std::vector<uint32_t> fields;
  fields.push_back(static_cast<uint32_t>(sizes.size() - 1));
  fields.insert(fields.end(), sizes.begin(), sizes.end());
  if (fields.size() % 2 != 0) fields.push_back(0);
  std::vector<uint8_t> bytes(fields.size() * 4);
  std::memcpy(bytes.data(), fields.data(), bytes.size());  // little-endian host
  return bytes;
}

TEST(FramingTest, RoundTripInOneChunk) {
  auto stream = three_messages();
  FrameDecoder decoder;
  ASSERT_TRUE(decoder.feed(stream.data(), stream.size()));
  EXPECT_EQ(decoder.buffered(), stream.size());
  std::vector<Message> messages;
  drain(decoder, messages);
  expect_three_messages(messages);
  EXPECT_EQ(decoder.buffered(), 0u);
  EXPECT_FALSE(decoder.next());
}

TEST(FramingTest, RoundTripByteByByte) {
  auto stream = three_messages();
  FrameDecoder decoder;
  std::vector<Message> messages;
  for (uint8_t byte : stream) {
    ASSERT_TRUE(decoder.feed(&byte, 1));
    drain(decoder, messages);
  }
  expect_three_messages(messages);
  EXPECT_EQ(decoder.buffered(), 0u);
}

TEST(FramingTest, RoundTripSplitAtEveryOffset) {
  auto stream = three_messages();
  for (size_t split = 0; split <= stream.size(); ++split) {
    FrameDecoder decoder;
    std::vector<Message> messages;
    ASSERT_TRUE(decoder.feed(stream.data(), split));
    drain(decoder, messages);
    ASSERT_TRUE(decoder.feed(stream.data() + split, stream.size() - split));
    drain(decoder, messages);
    expect_three_messages(messages);
  }
}

TEST(FramingTest, MessageIsMovable) {
  auto stream = three_messages();
  FrameDecoder decoder;
  ASSERT_TRUE(decoder.feed(stream.data(), stream.size()));
  std::optional<Message> first = decoder.next();
  ASSERT_TRUE(first);
  Message moved = std::move(*first);
  first.reset();
  EXPECT_EQ(moved.root<wire::ClientRequest>().getWorkerInfo(), 7u);
  EXPECT_GT(moved.size_in_bytes(), 0u);
}

TEST(FramingTest, TruncatedMessageWaits) {
  auto stream = three_messages();
  FrameDecoder decoder;
  ASSERT_TRUE(decoder.feed(stream.data(), stream.size() - 1));
  std::vector<Message> messages;
  drain(decoder, messages);
  EXPECT_EQ(messages.size(), 2u);
  EXPECT_GT(decoder.buffered(), 0u);
  ASSERT_TRUE(decoder.feed(stream.data() + stream.size() - 1, 1));
  drain(decoder, messages);
  expect_three_messages(messages);
}

TEST(FramingTest, HugeSegmentIsRejectedFromItsHeader) {
  FrameDecoder decoder;
  auto header = table({0xffffffffu});
  Status status = decoder.feed(header.data(), header.size());
  ASSERT_FALSE(status);
  EXPECT_NE(status.message().find("exceeds the limit"), std::string::npos) << status.message();
  EXPECT_LE(decoder.buffered(), header.size());
  // The failure is sticky: nothing more is accepted on this stream.
  uint8_t more[8] = {};
  EXPECT_FALSE(decoder.feed(more, sizeof(more)));
  EXPECT_FALSE(decoder.next());
}

TEST(FramingTest, HugeSizeIsRejectedFromAPartialTable) {
  FrameDecoder decoder;
  // Three segments; only the first word (count and first size) has arrived.
  auto header = table({0x20000000u, 1, 1});
  Status status = decoder.feed(header.data(), 8);
  ASSERT_FALSE(status);
  EXPECT_NE(status.message().find("exceeds the limit"), std::string::npos) << status.message();
}

TEST(FramingTest, LimitIsExact) {
  const uint32_t max_words = kMaxMessageBytes / sizeof(capnp::word);
  {
    FrameDecoder decoder;
    auto header = table({max_words - 1});  // one word of table plus the segment
    EXPECT_TRUE(decoder.feed(header.data(), header.size()));
    EXPECT_FALSE(decoder.next());
  }
  {
    FrameDecoder decoder;
    auto header = table({max_words});
    EXPECT_FALSE(decoder.feed(header.data(), header.size()));
  }
}

TEST(FramingTest, TooManySegmentsAreRejected) {
  FrameDecoder decoder;
  std::vector<uint32_t> sizes(1000, 0);
  auto header = table(sizes);
  Status status = decoder.feed(header.data(), 8);
  ASSERT_FALSE(status);
  EXPECT_NE(status.message().find("segments"), std::string::npos) << status.message();

  FrameDecoder wrapped;  // a count field of 0xffffffff means 2^32 segments, not 0
  uint8_t all_ones[8] = {0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0};
  EXPECT_FALSE(wrapped.feed(all_ones, sizeof(all_ones)));
}

TEST(FramingTest, LimitsAreSet) {
  capnp::ReaderOptions options = untrusted_reader_options();
  EXPECT_EQ(options.traversalLimitInWords, kMaxMessageBytes / sizeof(capnp::word));
  EXPECT_EQ(options.nestingLimit, 64);
}

// A message from raw little-endian words (the first one the segment table of one segment).
kj::Array<capnp::word> words_of(const std::vector<uint64_t>& raw) {
  auto words = kj::heapArray<capnp::word>(raw.size());
  std::memcpy(words.asBytes().begin(), raw.data(), raw.size() * sizeof(uint64_t));
  return words;
}

// Words of a message whose root is a chain of `depth` structs, each holding one pointer to the
// next (struct pointer, offset 0, no data, one pointer).
kj::Array<capnp::word> nested_chain(uint32_t depth) {
  std::vector<uint64_t> raw(depth + 2, uint64_t{1} << 48);
  raw.front() = uint64_t{depth + 1} << 32;
  raw.back() = 0;  // null pointer: the end of the chain
  return words_of(raw);
}

TEST(FramingTest, NestingLimitApplies) {
  {
    Message shallow(nested_chain(10));
    EXPECT_NO_THROW(shallow.root<capnp::AnyPointer>().targetSize());
  }
  Message deep(nested_chain(200));
  EXPECT_THROW(deep.root<capnp::AnyPointer>().targetSize(), kj::Exception);
}

TEST(FramingTest, TraversalLimitStopsAmplification) {
  // A 1 MiB text read 100 times is more than the 64 MiB traversal budget of one reader.
  capnp::MallocMessageBuilder builder;
  auto job = builder.initRoot<wire::ClientRequest>().initSubmit();
  job.initName(1 << 20);
  Message message(encode(builder));
  EXPECT_THROW(
      {
        for (int i = 0; i < 100; ++i) {
          message.root<wire::ClientRequest>().getSubmit().getName();
        }
      },
      kj::Exception);
}

TEST(FramingTest, BadRootPointerThrowsOnAccess) {
  // One segment of one word: a far pointer into a segment that does not exist.
  const uint64_t far = uint64_t{7} << 32 | 2;  // far pointer to segment 7
  Message message(words_of({uint64_t{1} << 32, far}));
  EXPECT_THROW(message.root<wire::ClientRequest>().which(), kj::Exception);
}

TEST(FramingTest, SelfReferenceIsBounded) {
  // A list pointer whose target is itself, as a list of pointers: reading it recursively must
  // stop at a limit instead of looping.
  // Low half: offset -1 (30 bits, two's complement) and kind 1 (list). High half: element
  // size 6 (pointers) and a count of 1.
  const uint64_t self = uint64_t{6 | 1 << 3} << 32 | 0xfffffffdu;
  Message message(words_of({uint64_t{1} << 32, self}));
  EXPECT_THROW(message.root<capnp::AnyPointer>().targetSize(), kj::Exception);
}

// Reads every field reachable from a request; any of it may throw on garbage.
void read_everything(Message& message) {
  auto request = message.root<wire::ClientRequest>();
  switch (request.which()) {
    case wire::ClientRequest::SUBMIT: {
      auto job = request.getSubmit();
      (void)job.getName().size();
      for (auto range : job.getTaskIds()) (void)range.getEnd();
      for (auto arg : job.getBody().getProgram()) (void)arg.size();
      for (auto kv : job.getBody().getEnv()) (void)kv.getValue().size();
      break;
    }
    case wire::ClientRequest::TASK_LIST:
      for (auto range : request.getTaskList().getTasks()) (void)range.getStart();
      break;
    default:
      break;
  }
  (void)message.root<capnp::AnyPointer>().targetSize();
}

TEST(FramingTest, GarbageNeverCrashes) {
  std::mt19937 random(12345);
  size_t decoded = 0;
  size_t rejected_streams = 0;
  for (int round = 0; round < 300; ++round) {
    FrameDecoder decoder;
    std::vector<uint8_t> garbage(1 + random() % 2048);
    for (auto& byte : garbage) byte = static_cast<uint8_t>(random());
    // Small segment counts and sizes make some frames complete, so decoding gets exercised.
    if (round % 2 == 0 && garbage.size() >= 8) {
      garbage[0] = static_cast<uint8_t>(random() % 3);
      garbage[1] = garbage[2] = garbage[3] = 0;
      garbage[4] = static_cast<uint8_t>(random() % 64);
      garbage[5] = garbage[6] = garbage[7] = 0;
    }
    size_t offset = 0;
    while (offset < garbage.size()) {
      size_t chunk = std::min<size_t>(1 + random() % 300, garbage.size() - offset);
      Status fed = decoder.feed(garbage.data() + offset, chunk);
      offset += chunk;
      if (!fed) {
        ++rejected_streams;
        break;
      }
      try {
        while (auto message = decoder.next()) {
          ++decoded;
          read_everything(*message);
        }
      } catch (const kj::Exception&) {
        // Expected for most garbage; the point is that it is an exception, not a crash.
      }
    }
  }
  EXPECT_GT(decoded, 0u);
  EXPECT_GT(rejected_streams, 0u);
}

}  // namespace
}  // namespace hq::net
