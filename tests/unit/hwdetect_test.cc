#include "worker/hwdetect.h"

#include <sched.h>

#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace hq::worker {
namespace {

using Groups = std::vector<std::vector<std::string>>;

DetectOptions synthetic(std::string topology) {
  DetectOptions o;
  o.nvidia = o.amd = false;
  o.synthetic = std::move(topology);
  return o;
}

DetectOptions gpus_only() {
  DetectOptions o;
  o.cpus = o.mem = false;
  return o;
}

// Sets an environment variable for the life of the object, then restores it.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value)
      setenv(name, value, 1);
    else
      unsetenv(name);
  }
  ~ScopedEnv() {
    if (old_)
      setenv(name_, old_->c_str(), 1);
    else
      unsetenv(name_);
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

TEST(HwDetect, SyntheticGroupsByNuma) {
  auto d = detect_resources(synthetic("NUMANode:2 Core:2 PU:2"));
  ASSERT_TRUE(d) << d.message();
  const ResourceDefinition* cpus = d->find("cpus");
  ASSERT_NE(cpus, nullptr);
  EXPECT_EQ(cpus->kind, ResourceKind::kIndexed);
  EXPECT_EQ(cpus->groups, (Groups{{"0", "1", "2", "3"}, {"4", "5", "6", "7"}}));
  EXPECT_EQ(d->cpus(), 8u);
  // hwloc gives every synthetic NUMA node 1 GiB unless told otherwise; that is what we report.
  const ResourceDefinition* mem = d->find("mem");
  ASSERT_NE(mem, nullptr);
  EXPECT_EQ(mem->kind, ResourceKind::kSum);
  EXPECT_EQ(mem->sum, 2048u);
  EXPECT_EQ(d->find("gpus/nvidia"), nullptr);
}

TEST(HwDetect, SyntheticNoHyperThreading) {
  DetectOptions o = synthetic("NUMANode:2 Core:2 PU:2");
  o.no_hyper_threading = true;
  auto d = detect_resources(o);
  ASSERT_TRUE(d) << d.message();
  EXPECT_EQ(d->find("cpus")->groups, (Groups{{"0", "2"}, {"4", "6"}}));
}

TEST(HwDetect, SyntheticWithoutNumaGroupsByPackage) {
  // hwloc inserts one NUMA node above the packages when the description has none, so the NUMA
  // level gives a single group and the packages decide.
  auto d = detect_resources(synthetic("Package:2 Core:3 PU:1"));
  ASSERT_TRUE(d) << d.message();
  EXPECT_EQ(d->find("cpus")->groups, (Groups{{"0", "1", "2"}, {"3", "4", "5"}}));
  EXPECT_EQ(d->find("mem")->sum, 1024u);
}

TEST(HwDetect, SyntheticSingleGroup) {
  auto d = detect_resources(synthetic("Core:4 PU:1"));
  ASSERT_TRUE(d) << d.message();
  EXPECT_EQ(d->find("cpus")->groups, (Groups{{"0", "1", "2", "3"}}));
}

TEST(HwDetect, NumaNodesInsidePackages) {
  auto d = detect_resources(synthetic("Package:2 NUMANode:2 Core:1 PU:2"));
  ASSERT_TRUE(d) << d.message();
  EXPECT_EQ(d->find("cpus")->groups, (Groups{{"0", "1"}, {"2", "3"}, {"4", "5"}, {"6", "7"}}));
}

TEST(HwDetect, NumaNodesSharingCpus) {
  // Two memory nodes per package with the same CPUs (as DDR and HBM): each PU is counted once.
  // This description gives the nodes no memory, so "mem" is left out.
  auto d = detect_resources(synthetic("Package:2 [NUMANode] [NUMANode] Core:2 PU:1"));
  ASSERT_TRUE(d) << d.message();
  EXPECT_EQ(d->find("cpus")->groups, (Groups{{"0", "1"}, {"2", "3"}}));
  EXPECT_EQ(d->find("mem"), nullptr);
}

TEST(HwDetect, OnlyWhatIsAsked) {
  DetectOptions o = synthetic("NUMANode:2 Core:2 PU:2");
  o.mem = false;
  auto d = detect_resources(o);
  ASSERT_TRUE(d) << d.message();
  EXPECT_EQ(d->resources.size(), 1u);
  o.mem = true;
  o.cpus = false;
  d = detect_resources(o);
  ASSERT_TRUE(d) << d.message();
  ASSERT_EQ(d->resources.size(), 1u);
  EXPECT_EQ(d->resources[0].name, "mem");
}

TEST(HwDetect, BadSyntheticTopology) {
  auto d = detect_resources(synthetic("Banana:2"));
  ASSERT_FALSE(d);
  EXPECT_NE(d.message().find("Banana:2"), std::string::npos) << d.message();
}

TEST(HwDetect, ParseDetectList) {
  auto all = parse_detect_list("all");
  ASSERT_TRUE(all) << all.message();
  EXPECT_TRUE(all->cpus && all->mem && all->nvidia && all->amd);

  auto none = parse_detect_list("none");
  ASSERT_TRUE(none) << none.message();
  EXPECT_FALSE(none->cpus || none->mem || none->nvidia || none->amd);

  auto some = parse_detect_list("cpus, gpus/amd");
  ASSERT_TRUE(some) << some.message();
  EXPECT_TRUE(some->cpus && some->amd);
  EXPECT_FALSE(some->mem || some->nvidia);

  auto gpus = parse_detect_list("mem,gpus/nvidia");
  ASSERT_TRUE(gpus) << gpus.message();
  EXPECT_TRUE(gpus->mem && gpus->nvidia);
  EXPECT_FALSE(gpus->cpus || gpus->amd);

  auto bad = parse_detect_list("cpus,gpu");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.message().find("'gpu'"), std::string::npos) << bad.message();

  EXPECT_FALSE(parse_detect_list(""));
  EXPECT_FALSE(parse_detect_list("cpus,,mem"));
  EXPECT_FALSE(parse_detect_list("all,cpus"));
}

TEST(HwDetect, CudaVisibleDevices) {
  ScopedEnv cuda("CUDA_VISIBLE_DEVICES", "2,3");
  auto d = detect_resources(gpus_only());
  ASSERT_TRUE(d) << d.message();
  const ResourceDefinition* gpus = d->find("gpus/nvidia");
  ASSERT_NE(gpus, nullptr);
  EXPECT_EQ(gpus->kind, ResourceKind::kIndexed);
  EXPECT_EQ(gpus->groups, (Groups{{"2", "3"}}));
  EXPECT_EQ(d->find("cpus"), nullptr);
}

TEST(HwDetect, RocrVisibleDevices) {
  ScopedEnv rocr("ROCR_VISIBLE_DEVICES", "1, 0");
  auto d = detect_resources(gpus_only());
  ASSERT_TRUE(d) << d.message();
  ASSERT_NE(d->find("gpus/amd"), nullptr);
  EXPECT_EQ(d->find("gpus/amd")->groups, (Groups{{"1", "0"}}));

  ScopedEnv unset("ROCR_VISIBLE_DEVICES", nullptr);
  d = detect_resources(gpus_only());
  ASSERT_TRUE(d) << d.message();
  EXPECT_EQ(d->find("gpus/amd"), nullptr);
}

TEST(HwDetect, GpusOffDetectsNone) {
  ScopedEnv cuda("CUDA_VISIBLE_DEVICES", "0");
  ScopedEnv rocr("ROCR_VISIBLE_DEVICES", "0");
  DetectOptions o = gpus_only();
  o.nvidia = o.amd = false;
  auto d = detect_resources(o);
  ASSERT_TRUE(d) << d.message();
  EXPECT_TRUE(d->resources.empty());
}

uint32_t affinity_count() {
  cpu_set_t set;
  CPU_ZERO(&set);
  EXPECT_EQ(sched_getaffinity(0, sizeof set, &set), 0);
  return CPU_COUNT(&set);
}

TEST(HwDetect, ThisMachineMatchesAffinity) {
  auto d = detect_resources(DetectOptions{});
  ASSERT_TRUE(d) << d.message();
  EXPECT_EQ(d->cpus(), affinity_count());
  ASSERT_NE(d->find("mem"), nullptr);
  EXPECT_GT(d->find("mem")->sum, 0u);
}

TEST(HwDetect, ThisMachineFollowsBinding) {
  cpu_set_t old;
  CPU_ZERO(&old);
  ASSERT_EQ(sched_getaffinity(0, sizeof old, &old), 0);
  int last = -1;
  for (int i = 0; i < CPU_SETSIZE; ++i)
    if (CPU_ISSET(i, &old)) last = i;
  ASSERT_GE(last, 0);
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(last, &one);
  ASSERT_EQ(sched_setaffinity(0, sizeof one, &one), 0);
  auto d = detect_resources(DetectOptions{});
  ASSERT_EQ(sched_setaffinity(0, sizeof old, &old), 0);
  ASSERT_TRUE(d) << d.message();
  EXPECT_EQ(d->find("cpus")->groups, (Groups{{std::to_string(last)}}));
}

}  // namespace
}  // namespace hq::worker
