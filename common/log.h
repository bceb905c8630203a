#pragma once
// Logging setup, called once from main(). Everything else logs through spdlog's default logger.

#include <string_view>

#include <spdlog/spdlog.h>

namespace hq {

// When log lines are coloured: "always", "never", or "auto" (only on a terminal).
enum class Colors { kAuto, kAlways, kNever };

// Logs to stderr at `level` ("trace".."off"); $HQ_LOG overrides it.
void init_logging(std::string_view level, Colors colors = Colors::kAuto);

}  // namespace hq
