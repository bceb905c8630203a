#include "common/log.h"

#include <cstdlib>
#include <string>

#include <spdlog/sinks/stdout_color_sinks.h>

namespace hq {

void init_logging(std::string_view level, Colors colors) {
  std::string chosen(level);
  if (const char* env = std::getenv("HQ_LOG"); env && *env) chosen = env;
  // spdlog's automatic mode colours only when stderr is a terminal.
  const spdlog::color_mode mode = colors == Colors::kAlways  ? spdlog::color_mode::always
                                  : colors == Colors::kNever ? spdlog::color_mode::never
                                                             : spdlog::color_mode::automatic;
  auto logger = spdlog::stderr_color_mt("hq", mode);
  logger->set_level(spdlog::level::from_str(chosen));
  logger->set_pattern("[%Y-%m-%d %H:%M:%S.%e %^%l%$] %v");
  logger->flush_on(spdlog::level::info);
  spdlog::set_default_logger(logger);
}

}  // namespace hq
