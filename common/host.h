#pragma once
// Facts about the machine this process runs on.

#include <cstdint>
#include <string>
#include <string_view>

namespace hq {

// This machine's hostname, or "localhost" when it cannot be read.
std::string local_hostname();

// A hostname up to its first '.' ("cn690.karolina.it4i.cz" -> "cn690"), as many HPC tools
// name nodes; an IPv4 address is kept whole.
std::string short_hostname(std::string_view host);

// The number of CPUs in this process's affinity mask (at least 1).
uint32_t available_cpus();

// Raises this process's soft limit of open file descriptors to its hard limit, so that many
// connections cannot exhaust the descriptors its storage needs. Returns the soft limit now in
// force.
uint64_t raise_descriptor_limit();

}  // namespace hq
