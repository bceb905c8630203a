#include "common/log.h"

#include <cstdlib>
#include <string>

#include <spdlog/sinks/stdout_sinks.h>

namespace hq {

void init_logging(std::string_view level) {
  std::string chosen(level);
  if (const char* env = std::getenv("HQ_LOG"); env && *env) chosen = env;
  auto logger = spdlog::stderr_logger_mt("hq");
  logger->set_level(spdlog::level::from_str(chosen));
  logger->set_pattern("[%Y-%m-%d %H:%M:%S.%e %^%l%$] %v");
  logger->flush_on(spdlog::level::info);
  spdlog::set_default_logger(logger);
}

}  // namespace hq
