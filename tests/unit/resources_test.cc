#include "common/resources.h"

#include <gtest/gtest.h>

#include <tuple>

namespace hq {
namespace {

using Groups = std::vector<std::vector<std::string>>;

TEST(CpuDefinition, CountGroupsAndLists) {
  auto a = parse_cpu_definition("4");
  ASSERT_TRUE(a) << a.message();
  EXPECT_EQ(a->groups, (Groups{{"0", "1", "2", "3"}}));
  auto b = parse_cpu_definition("2x3");
  ASSERT_TRUE(b) << b.message();
  EXPECT_EQ(b->groups, (Groups{{"0", "1", "2"}, {"3", "4", "5"}}));
  auto c = parse_cpu_definition("[[0,1],[2,3]]");
  ASSERT_TRUE(c) << c.message();
  EXPECT_EQ(c->groups, (Groups{{"0", "1"}, {"2", "3"}}));
  auto d = parse_cpu_definition(" [ 5, 7 ] ");
  ASSERT_TRUE(d) << d.message();
  EXPECT_EQ(d->groups, (Groups{{"5", "7"}}));
  EXPECT_EQ(describe(*b), "cpus 2x3");
  EXPECT_EQ(describe(*d), "cpus 2");
}

TEST(CpuDefinition, Errors) {
  for (const char* bad : {"0", "0x4", "2x0", "", "abc", "[]", "[[0,1],[]]", "[0,0]", "[a,b]",
                          "[[0,1],[2,3]", "sum(4)", "2x", "-1"}) {
    auto r = parse_cpu_definition(bad);
    EXPECT_FALSE(r) << bad;
  }
  EXPECT_NE(parse_cpu_definition("[0,0]").message().find("'0' listed twice"), std::string::npos);
  EXPECT_NE(parse_resource_definition("cpus=sum(4)").message().find("cannot be a sum"),
            std::string::npos);
}

TEST(ResourceDefinition, Forms) {
  auto list = parse_resource_definition("gpus=[a,b,c]");
  ASSERT_TRUE(list) << list.message();
  EXPECT_EQ(list->kind, ResourceKind::kIndexed);
  EXPECT_EQ(list->groups, (Groups{{"a", "b", "c"}}));
  auto range = parse_resource_definition("ports=range(10-12)");
  ASSERT_TRUE(range) << range.message();
  EXPECT_EQ(range->groups, (Groups{{"10", "11", "12"}}));
  auto sum = parse_resource_definition("mem=sum(64000)");
  ASSERT_TRUE(sum) << sum.message();
  EXPECT_EQ(sum->kind, ResourceKind::kSum);
  EXPECT_EQ(sum->sum, 64000u);
  auto groups = parse_resource_definition("gpus/nvidia=[[0,1],[2,3]]");
  ASSERT_TRUE(groups) << groups.message();
  EXPECT_EQ(groups->name, "gpus/nvidia");
  EXPECT_EQ(describe(*groups), "gpus/nvidia 2x2");
}

TEST(ResourceDefinition, Errors) {
  EXPECT_NE(parse_resource_definition("mem=sum(0)").message().find("zero amount"),
            std::string::npos);
  EXPECT_NE(parse_resource_definition("x=range(5-2)").message().find("empty range"),
            std::string::npos);
  EXPECT_FALSE(parse_resource_definition("gpus"));
  EXPECT_FALSE(parse_resource_definition("=sum(1)"));
  EXPECT_FALSE(parse_resource_definition("a b=sum(1)"));
  EXPECT_FALSE(parse_resource_definition("gpus=[]"));
  EXPECT_FALSE(parse_resource_definition("gpus=4"));
  ResourceDescriptor d;
  std::vector<std::string> defined;
  ASSERT_TRUE(add_definition(d, *parse_resource_definition("gpus=[0]"), defined));
  auto twice = add_definition(d, *parse_resource_definition("gpus=[1]"), defined);
  ASSERT_FALSE(twice);
  EXPECT_EQ(twice.message(), "resource 'gpus' defined more than once");
}

TEST(Descriptor, DescribeAndSet) {
  ResourceDescriptor d;
  d.set(*parse_cpu_definition("2x4"));
  d.set(*parse_resource_definition("gpus/nvidia=[0,1]"));
  d.set(*parse_resource_definition("mem=sum(64000)"));
  EXPECT_EQ(describe(d), "cpus 2x4; gpus/nvidia 2; mem 62.50 GiB");
  d.set(*parse_cpu_definition("3"));
  EXPECT_EQ(d.cpus(), 3u);
  EXPECT_EQ(d.resources.size(), 3u);
}

TEST(Request, Parse) {
  auto a = parse_request_entry("cpus", "4 compact!");
  ASSERT_TRUE(a) << a.message();
  EXPECT_EQ(a->amount, 4 * kAmountUnit);
  EXPECT_EQ(a->policy, AllocationPolicy::kForceCompact);
  auto b = parse_named_request("gpus=0.5");
  ASSERT_TRUE(b) << b.message();
  EXPECT_EQ(b->name, "gpus");
  EXPECT_EQ(b->amount, kAmountUnit / 2);
  auto c = parse_request_entry("cpus", "all");
  ASSERT_TRUE(c);
  EXPECT_EQ(c->policy, AllocationPolicy::kAll);
  for (auto [text, policy] : std::vector<std::pair<const char*, AllocationPolicy>>{
           {"2 tight", AllocationPolicy::kTight},
           {"2 tight!", AllocationPolicy::kForceTight},
           {"2  scatter", AllocationPolicy::kScatter},
           {"2 compact", AllocationPolicy::kCompact}}) {
    auto r = parse_request_entry("cpus", text);
    ASSERT_TRUE(r) << text << ": " << r.message();
    EXPECT_EQ(r->policy, policy) << text;
  }
  EXPECT_EQ(format_amount(kAmountUnit / 4), "0.25");
  EXPECT_EQ(format_amount(3 * kAmountUnit), "3");
}

TEST(Request, FractionsAboveOneAndWithPolicies) {
  auto a = parse_named_request("gpus=2.5");
  ASSERT_TRUE(a) << a.message();
  EXPECT_EQ(a->amount, 25000u);
  EXPECT_EQ(a->policy, AllocationPolicy::kCompact);
  for (auto [text, amount, policy] :
       std::vector<std::tuple<const char*, ResourceAmount, AllocationPolicy>>{
           {"1.5", 15000, AllocationPolicy::kCompact},
           {"2.5 compact", 25000, AllocationPolicy::kCompact},
           {"0.5 scatter", 5000, AllocationPolicy::kScatter},
           {"3.25 tight", 32500, AllocationPolicy::kTight},
           {"1_000.5", 10'005'000, AllocationPolicy::kCompact},
           {"10.0001", 100'001, AllocationPolicy::kCompact}}) {
    auto r = parse_request_entry("cpus", text);
    ASSERT_TRUE(r) << text << ": " << r.message();
    EXPECT_EQ(r->amount, amount) << text;
    EXPECT_EQ(r->policy, policy) << text;
  }
  // As in HyperQueue, the strict policies take whole amounts only.
  auto strict = parse_request_entry("gpus", "2.5 compact!");
  ASSERT_FALSE(strict);
  EXPECT_NE(strict.message().find("compact! takes whole amounts"), std::string::npos)
      << strict.message();
  EXPECT_FALSE(parse_request_entry("gpus", "0.5 tight!"));
  EXPECT_TRUE(parse_request_entry("gpus", "2.0 compact!"));  // a whole amount, written so
  // make_request checks the same for entries that did not come through the parser.
  auto made = make_request({{"gpus", 15000, AllocationPolicy::kForceCompact}});
  ASSERT_FALSE(made);
  EXPECT_EQ(made.message(), "resource 'gpus': compact! takes whole amounts, not 1.5");
  auto fine = make_request({{"cpus", 15000, AllocationPolicy::kScatter}});
  ASSERT_TRUE(fine) << fine.message();
  EXPECT_EQ(fine->cpus(), 15000u);
  EXPECT_EQ(whole_cpus(*fine), 2u);
  EXPECT_EQ(describe(*fine), "cpus=1.5 scatter");
}

TEST(Request, DescribeWithPolicyAsHyperQueueTellsTasks) {
  EXPECT_EQ(describe_with_policy(*parse_request_entry("gpus", "2")), "2 compact");
  EXPECT_EQ(describe_with_policy(*parse_request_entry("gpus", "1.5 scatter")), "1.5 scatter");
  EXPECT_EQ(describe_with_policy(*parse_request_entry("gpus", "4 compact!")), "4 compact!");
  EXPECT_EQ(describe_with_policy(*parse_request_entry("gpus", "all")), "all");
}

TEST(Definition, SumTakesWholeAmountsWithUnderscores) {
  auto d = parse_resource_definition("mem=sum(1_000_000)");
  ASSERT_TRUE(d) << d.message();
  EXPECT_EQ(d->sum, 1'000'000u);
  // A sum pool has a whole size in HyperQueue: no fractions.
  auto frac = parse_resource_definition("mem=sum(2.5)");
  ASSERT_FALSE(frac);
  EXPECT_NE(frac.message().find("expected sum(N)"), std::string::npos) << frac.message();
}

TEST(Request, Errors) {
  for (const char* bad :
       {"0", "0.00001", "x", "2 packed", "-1", "", "1.5 compact!", "1.5.5", "1.", ".5", "0.5_0"}) {
    EXPECT_FALSE(parse_request_entry("gpus", bad)) << bad;
  }
  EXPECT_NE(parse_request_entry("cpus", "2 packed").message().find("unknown policy 'packed'"),
            std::string::npos);
  EXPECT_FALSE(parse_named_request("gpus"));
}

TEST(Request, MakeAddsCpusAndSorts) {
  auto r = make_request({*parse_named_request("mem=100"), *parse_named_request("gpus=1")});
  ASSERT_TRUE(r) << r.message();
  ASSERT_EQ(r->entries.size(), 3u);
  EXPECT_EQ(r->entries[0].name, "cpus");
  EXPECT_EQ(r->cpus(), kAmountUnit);
  EXPECT_EQ(describe(*r), "cpus=1; gpus=1; mem=100");
  auto twice = make_request({*parse_named_request("gpus=1"), *parse_named_request("gpus=2")});
  ASSERT_FALSE(twice);
  EXPECT_EQ(twice.message(), "resource 'gpus' requested more than once");
}

TEST(Request, EnvName) {
  // As HyperQueue names them: the case kept, other characters turned into '_'.
  EXPECT_EQ(env_name("gpus/nvidia"), "gpus_nvidia");
  EXPECT_EQ(env_name("my-res.X"), "my_res_X");
  EXPECT_EQ(env_name("cpus"), "cpus");
}

}  // namespace
}  // namespace hq
