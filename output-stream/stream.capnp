# The hq output stream: the stdout and stderr of many tasks in one directory, one file per
# writer (worker process). docs/stream-format.md describes the whole file layout.
# Never renumber or reuse a field; add new ones at the end of a struct or union.
@0x8a9abcad18c78243;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("hq::stream::schema");

# The first 8 bytes of every stream file.
const streamMagic :Data = "HQSTREAM";
# The little-endian UInt32 after the magic. Readers refuse any other value: a change that an older
# reader would misread bumps it.
const formatVersion :UInt32 = 1;

# The first framed message of a file, right after the 16-byte fixed prefix.
struct StreamHeader {
  serverUid @0 :Text;
  workerId @1 :UInt32;
  fileId @2 :UInt64;        # random; ties index sidecars to this file
  createdMs @3 :Int64;      # Unix ms
  pid @4 :UInt32;
  hostname @5 :Text;
}

# Every later framed message. A data record is followed by `size` raw payload bytes, then zero
# bytes up to the next multiple of 8, so that every message starts on a word boundary.
struct Record {
  job @0 :UInt32;
  task @1 :UInt32;
  instance @2 :UInt32;
  timeMs @3 :Int64;         # Unix ms: when the task started, the chunk was written, the task ended

  union {
    # Tag 0 is never written: an all-zero message is not a record.
    invalid @4 :Void;
    start @5 :Void;
    data :group {
      channel @6 :UInt8;    # 0 stdout, 1 stderr
      size @7 :UInt32;      # payload bytes after this message, at most 16 MiB
      crc32c @8 :UInt32;    # CRC-32C (Castagnoli) of the payload
    }
    end :group {
      ok @9 :Bool;          # the task succeeded
      exitCode @10 :Int32;  # as the worker reports it
    }
  }
}
