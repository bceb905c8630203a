// Drives alloc::BatchSystem from the command line, for tests/integration/test_alloc_batch.py:
//
//   alloc-probe slurm|pbs submit LOG_DIR HQ_BINARY SERVER_DIR TIME_LIMIT [BATCH_ARG...]
//                                        submits an allocation of one worker; prints its id
//   alloc-probe slurm|pbs status ID...   one query; prints "ID STATE DETAIL" per known id
//   alloc-probe slurm|pbs cancel ID...
//
// Exits 1 with the error on stderr when the batch system refuses.

#include <iostream>
#include <string>
#include <vector>

#include "alloc/batch_system.h"

int main(int argc, char** argv) {
  using namespace hq;
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.size() < 2) {
    std::cerr << "usage: alloc-probe slurm|pbs submit|status|cancel ...\n";
    return 2;
  }
  auto kind = alloc::parse_manager(args[0]);
  if (!kind) {
    std::cerr << kind.message() << "\n";
    return 2;
  }
  alloc::ProcessRunner runner;
  alloc::BatchSystem batch(alloc::make_backend(*kind), runner);
  const std::string& verb = args[1];
  std::vector<std::string> rest(args.begin() + 2, args.end());
  if (verb == "submit" && rest.size() >= 4) {
    alloc::AllocationSpec spec;
    spec.name = "probe";
    spec.log_dir = rest[0];
    spec.hq_binary = rest[1];
    spec.server_dir = rest[2];
    auto limit = parse_duration(rest[3]);
    if (!limit) {
      std::cerr << limit.message() << "\n";
      return 2;
    }
    spec.time_limit = *limit;
    spec.batch_args.assign(rest.begin() + 4, rest.end());
    auto id = batch.submit(spec);
    if (!id) {
      std::cerr << id.message() << "\n";
      return 1;
    }
    std::cout << *id << "\n";
    return 0;
  }
  if (verb == "status") {
    auto states = batch.query(rest);
    if (!states) {
      std::cerr << states.message() << "\n";
      return 1;
    }
    for (const auto& [id, s] : *states) {
      std::cout << id << " " << alloc::state_name(s.state) << " " << s.detail << "\n";
    }
    return 0;
  }
  if (verb == "cancel") {
    Status st = batch.cancel(rest);
    if (!st) {
      std::cerr << st.message() << "\n";
      return 1;
    }
    return 0;
  }
  std::cerr << "usage: alloc-probe slurm|pbs submit|status|cancel ...\n";
  return 2;
}
