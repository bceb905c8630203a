#include "cli/directives.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace hq::cli {
namespace {

using Args = std::vector<std::string>;

std::vector<std::string> texts(std::string_view script) {
  std::vector<std::string> out;
  for (const auto& d : extract_directives(script)) out.push_back(d.text);
  return out;
}

TEST(Directives, ScanStopsAtTheFirstCommand) {
  auto found = extract_directives(
      "#!/bin/bash\n\n# a comment\n  #HQ --cpus 4\n#HQ\n#HQ   --name x  \n\nsleep 1\n#HQ --pin "
      "omp\n");
  ASSERT_EQ(found.size(), 2u);
  EXPECT_EQ(found[0].line, 4u);
  EXPECT_EQ(found[0].text, "--cpus 4");
  EXPECT_EQ(found[1].line, 6u);
  EXPECT_EQ(found[1].text, "--name x");
}

TEST(Directives, OnlyTheHqPrefixFollowedByABlank) {
  EXPECT_EQ(texts("#HQX --cpus 2\n#HQ\t--cpus 3\n"), (Args{"--cpus 3"}));
  EXPECT_EQ(texts("#HQ --cpus 1\r\n#HQ --name w\r\n"), (Args{"--cpus 1", "--name w"}));
  EXPECT_TRUE(texts("echo hi\n#HQ --cpus 2\n").empty());
  EXPECT_TRUE(texts("").empty());
}

TEST(Directives, OnlyThePrefixOfTheScriptIsRead) {
  std::string script(kDirectivesPrefixBytes - 4, '#');
  script += "\n#HQ --cpus 2\n";
  EXPECT_TRUE(texts(script).empty());
}

TEST(Directives, SplitsWordsAndQuotes) {
  EXPECT_EQ(*split_directive("one two   three"), (Args{"one", "two", "three"}));
  EXPECT_EQ(*split_directive("--cpus=\"2 compact\""), (Args{"--cpus=2 compact"}));
  EXPECT_EQ(*split_directive("--name \"a \\\"b\\\" c\" --pin"),
            (Args{"--name", "a \"b\" c", "--pin"}));
  EXPECT_EQ(*split_directive("a\\ b"), (Args{"a b"}));
  EXPECT_EQ(*split_directive("\"\""), (Args{""}));
  auto bad = split_directive("--name \"open");
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.message().find("unterminated quote"), std::string::npos);
}

TEST(Directives, ArgsAreCheckedAndNameTheLine) {
  auto args = directive_args("#HQ --cpus 2 --task-dir\n#HQ --name=sim --env A=1\n", "s.sh");
  ASSERT_TRUE(args.is_ok()) << args.message();
  EXPECT_EQ(*args, (Args{"--cpus", "2", "--task-dir", "--name=sim", "--env", "A=1"}));

  auto unknown = directive_args("#HQ --cpus 2\n#HQ --bogus\n", "s.sh");
  ASSERT_FALSE(unknown.is_ok());
  EXPECT_NE(unknown.message().find("s.sh:2"), std::string::npos) << unknown.message();
  EXPECT_NE(unknown.message().find("--bogus"), std::string::npos);

  auto wait = directive_args("#HQ --wait\n", "s.sh");
  ASSERT_FALSE(wait.is_ok());
  EXPECT_NE(wait.message().find("command line"), std::string::npos);

  auto missing = directive_args("#HQ --cpus\n", "s.sh");
  ASSERT_FALSE(missing.is_ok());
  EXPECT_NE(missing.message().find("needs a value"), std::string::npos);

  auto stray = directive_args("#HQ program\n", "s.sh");
  ASSERT_FALSE(stray.is_ok());
}

}  // namespace
}  // namespace hq::cli
