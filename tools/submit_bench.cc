// Submission throughput and latency over the client protocol, for tools/bench-journal: CLIENTS
// threads, each with its own connection, submit COUNT one-task jobs one after the other. Prints
// one JSON object: submits, seconds, submits/s, and latency percentiles in milliseconds.
//
//   submit-bench SERVER_DIR CLIENTS COUNT

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <vector>

#include "cli/client.h"

using namespace hq;
using Clock = std::chrono::steady_clock;

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: submit-bench SERVER_DIR CLIENTS COUNT\n");
    return 2;
  }
  cli::GlobalOptions options;
  options.server_dir = argv[1];
  const int clients = std::atoi(argv[2]);
  const int count = std::atoi(argv[3]);
  if (clients <= 0 || count <= 0) {
    std::fprintf(stderr, "submit-bench: CLIENTS and COUNT must be positive\n");
    return 2;
  }
  std::vector<cli::Client> connections;
  for (int i = 0; i < clients; ++i) {
    auto c = cli::Client::connect(options);
    if (!c) {
      std::fprintf(stderr, "submit-bench: %s\n", c.message().c_str());
      return 1;
    }
    connections.push_back(std::move(*c));
  }
  std::mutex mu;
  std::vector<double> latencies_ms;
  bool failed = false;
  const auto begin = Clock::now();
  std::vector<std::thread> threads;
  for (int i = 0; i < clients; ++i) {
    threads.emplace_back([&, i] {
      std::vector<double> mine;
      for (int k = 0; k < count; ++k) {
        capnp::MallocMessageBuilder request;
        auto job = request.initRoot<wire::ClientRequest>().initSubmit();
        job.setName("bench");
        auto range = job.initTaskIds(1)[0];
        range.setStart(0);
        range.setEnd(0);
        range.setStep(1);
        auto body = job.initBody();
        body.initProgram(1).set(0, "/bin/true");
        body.setCpus(1);
        const auto t = Clock::now();
        auto reply = connections[i].call(request);
        mine.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t).count());
        if (!reply) {
          std::lock_guard lock(mu);
          if (!failed) std::fprintf(stderr, "submit-bench: %s\n", reply.message().c_str());
          failed = true;
          return;
        }
      }
      std::lock_guard lock(mu);
      latencies_ms.insert(latencies_ms.end(), mine.begin(), mine.end());
    });
  }
  for (auto& t : threads) t.join();
  const double seconds = std::chrono::duration<double>(Clock::now() - begin).count();
  if (failed) return 1;
  std::sort(latencies_ms.begin(), latencies_ms.end());
  auto pct = [&](double p) {
    return latencies_ms[std::min(
        latencies_ms.size() - 1,
        static_cast<size_t>(p * static_cast<double>(latencies_ms.size())))];
  };
  const double n = static_cast<double>(latencies_ms.size());
  std::printf(
      "{\"submits\": %.0f, \"seconds\": %.4f, \"per_second\": %.1f, \"p50_ms\": %.3f, "
      "\"p99_ms\": %.3f}\n",
      n, seconds, n / seconds, pct(0.5), pct(0.99));
  return 0;
}
