#pragma once
// Logging setup, called once from main(). Everything else logs through spdlog's default logger.

#include <string_view>

#include <spdlog/spdlog.h>

namespace hq {

// Logs to stderr at `level` ("trace".."off"); $HQ_LOG overrides it.
void init_logging(std::string_view level);

}  // namespace hq
