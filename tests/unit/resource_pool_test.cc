#include "common/resource_pool.h"

#include <gtest/gtest.h>

#include <map>
#include <set>

namespace hq {
namespace {

class PoolTest : public ::testing::Test {
 protected:
  void make(std::initializer_list<const char*> defs, const char* cpus = "2x4") {
    ResourceDescriptor d;
    d.set(*parse_cpu_definition(cpus));
    for (const char* def : defs) d.set(*parse_resource_definition(def));
    pool = ResourcePool(d, names);
  }
  PoolRequest request(std::initializer_list<const char*> entries) {
    std::vector<ResourceRequestEntry> list;
    for (const char* e : entries) {
      auto parsed = parse_named_request(e);
      EXPECT_TRUE(parsed) << parsed.message();
      list.push_back(*parsed);
    }
    auto r = make_request(list);
    EXPECT_TRUE(r) << r.message();
    return intern_request(*r, names);
  }
  // Units of cpus taken, and the groups they are in.
  std::vector<uint32_t> cpus_of(const Allocation& a) {
    std::vector<uint32_t> out;
    for (const auto& e : a) {
      if (e.resource == names.find("cpus")) out.push_back(e.unit);
    }
    return out;
  }
  std::set<uint32_t> groups_of(const Allocation& a) {
    std::set<uint32_t> out;
    for (uint32_t u : cpus_of(a)) out.insert(pool.group_of(names.find("cpus"), u));
    return out;
  }
  uint32_t cpus_id() { return names.find("cpus"); }

  ResourceNames names;
  ResourcePool pool;
  Allocation a;
};

TEST_F(PoolTest, CompactTakesOneGroupWhenItCan) {
  make({});
  ASSERT_TRUE(pool.allocate(request({"cpus=3"}), a));
  EXPECT_EQ(cpus_of(a), (std::vector<uint32_t>{0, 1, 2}));
  // Group 0 has 1 left, group 1 has 4: a 2-CPU task goes whole into group 1.
  ASSERT_TRUE(pool.allocate(request({"cpus=2"}), a));
  EXPECT_EQ(groups_of(a), (std::set<uint32_t>{1}));
  // 3 free (1 + 2): compact spreads when it must.
  ASSERT_TRUE(pool.allocate(request({"cpus=3"}), a));
  EXPECT_EQ(groups_of(a).size(), 2u);
  EXPECT_EQ(pool.free_amount(cpus_id()), 0u);
  EXPECT_FALSE(pool.fits(request({"cpus=1"})));
}

TEST_F(PoolTest, ForceCompactWaitsForOneGroup) {
  make({});
  Allocation first, second;
  ASSERT_TRUE(pool.allocate(request({"cpus=2"}), first));   // group 0: 2 left
  ASSERT_TRUE(pool.allocate(request({"cpus=3"}), second));  // group 1: 1 left
  // 3 CPUs are free, but in two groups: compact! waits, compact does not.
  EXPECT_FALSE(pool.fits(request({"cpus=3 compact!"})));
  EXPECT_FALSE(pool.fits(request({"cpus=3 tight!"})));
  EXPECT_TRUE(pool.fits(request({"cpus=3"})));
  EXPECT_NE(pool.why_not(request({"cpus=3 compact!"}), names).find("required shape"),
            std::string::npos);
  pool.release(second);
  ASSERT_TRUE(pool.allocate(request({"cpus=3 compact!"}), a));
  EXPECT_EQ(groups_of(a), (std::set<uint32_t>{1}));
  // 6 CPUs need 2 groups of 4 at least: compact! takes exactly 2.
  pool.release(a);
  pool.release(first);
  ASSERT_TRUE(pool.allocate(request({"cpus=6 compact!"}), a));
  EXPECT_EQ(groups_of(a).size(), 2u);
}

TEST_F(PoolTest, TightFillsTheMostUsedGroup) {
  make({});
  Allocation first;
  ASSERT_TRUE(pool.allocate(request({"cpus=1"}), first));  // group 0: 3 left
  // compact picks the group with most free (group 1), tight the fullest that still fits.
  EXPECT_TRUE(pool.allocate(request({"cpus=2"}), a));
  EXPECT_EQ(groups_of(a), (std::set<uint32_t>{1}));
  pool.release(a);
  EXPECT_TRUE(pool.allocate(request({"cpus=2 tight"}), a));
  EXPECT_EQ(groups_of(a), (std::set<uint32_t>{0}));
}

TEST_F(PoolTest, ScatterSpreadsOverGroups) {
  make({}, "4x2");
  ASSERT_TRUE(pool.allocate(request({"cpus=4 scatter"}), a));
  EXPECT_EQ(groups_of(a).size(), 4u);
  pool.release(a);
  ASSERT_TRUE(pool.allocate(request({"cpus=4"}), a));
  EXPECT_EQ(groups_of(a).size(), 2u);
}

TEST_F(PoolTest, AllNeedsTheWholeResource) {
  make({"mem=sum(1000)"});
  Allocation one;
  ASSERT_TRUE(pool.allocate(request({"cpus=1"}), one));
  EXPECT_FALSE(pool.fits(request({"cpus=all"})));
  EXPECT_TRUE(pool.could_fit(request({"cpus=all"})));
  pool.release(one);
  ASSERT_TRUE(pool.allocate(request({"cpus=all", "mem=all"}), a));
  EXPECT_EQ(cpus_of(a).size(), 8u);
  EXPECT_EQ(pool.free_amount(names.find("mem")), 0u);
}

TEST_F(PoolTest, FractionsShareAUnit) {
  make({"gpus=[0,1]"});
  Allocation x, y, z;
  ASSERT_TRUE(pool.allocate(request({"gpus=0.5"}), x));
  ASSERT_TRUE(pool.allocate(request({"gpus=0.5"}), y));
  auto gpu = [&](const Allocation& al) {
    for (const auto& e : al) {
      if (e.resource == names.find("gpus")) return e.unit;
    }
    return UINT32_MAX;
  };
  EXPECT_EQ(gpu(x), gpu(y));  // two halves share one GPU
  ASSERT_TRUE(pool.allocate(request({"gpus=1"}), z));
  EXPECT_NE(gpu(z), gpu(x));
  EXPECT_FALSE(pool.fits(request({"gpus=0.25"})));
  pool.release(x);
  EXPECT_TRUE(pool.fits(request({"gpus=0.5"})));
  EXPECT_FALSE(pool.fits(request({"gpus=1"})));  // half of a GPU is not a GPU
}

TEST_F(PoolTest, FractionAboveOneIsWholeUnitsPlusAShare) {
  make({"gpus=[0,1,2]"});
  const uint32_t gpus = names.find("gpus");
  // units of gpus in `al`, in allocation order, with their amounts.
  auto taken = [&](const Allocation& al) {
    std::vector<std::pair<uint32_t, ResourceAmount>> out;
    for (const auto& e : al) {
      if (e.resource == gpus) out.emplace_back(e.unit, e.amount);
    }
    return out;
  };
  Allocation x, y;
  ASSERT_TRUE(pool.allocate(request({"gpus=1.5"}), x));
  auto tx = taken(x);
  ASSERT_EQ(tx.size(), 2u);
  EXPECT_EQ(tx[0].second, kAmountUnit);      // one whole GPU
  EXPECT_EQ(tx[1].second, kAmountUnit / 2);  // and half of another, last
  EXPECT_NE(tx[0].first, tx[1].first);
  EXPECT_EQ(pool.free_amount(gpus), 15000u);
  // A second 1.5 takes the last whole GPU and the other half of the shared one.
  ASSERT_TRUE(pool.allocate(request({"gpus=1.5"}), y));
  auto ty = taken(y);
  ASSERT_EQ(ty.size(), 2u);
  EXPECT_EQ(ty[1].first, tx[1].first);
  EXPECT_EQ(ty[1].second, kAmountUnit / 2);
  std::set<uint32_t> whole{tx[0].first, ty[0].first, tx[1].first};
  EXPECT_EQ(whole.size(), 3u);
  EXPECT_EQ(pool.free_amount(gpus), 0u);
  for (uint32_t u = 0; u < 3; ++u) EXPECT_EQ(pool.unit_free(gpus, u), 0u);
  EXPECT_FALSE(pool.fits(request({"gpus=0.0001"})));
  EXPECT_TRUE(pool.could_fit(request({"gpus=2.5"})));
  EXPECT_FALSE(pool.could_fit(request({"gpus=3.5"})));
  pool.release(x);
  EXPECT_EQ(pool.free_amount(gpus), 15000u);
  EXPECT_EQ(pool.unit_free(gpus, tx[1].first), kAmountUnit / 2);
  // 1.5 free as one whole GPU and half of one: 1.5 fits, 2 does not, and neither does 1.75
  // (the share must come from one unit).
  EXPECT_TRUE(pool.fits(request({"gpus=1.5"})));
  EXPECT_FALSE(pool.fits(request({"gpus=2"})));
  EXPECT_FALSE(pool.fits(request({"gpus=1.75"})));
  pool.release(y);
  EXPECT_EQ(pool.free_amount(gpus), 3 * kAmountUnit);
  // With everything free, 2.5 takes two whole GPUs and half of the third; 0.6 then does not fit.
  ASSERT_TRUE(pool.allocate(request({"gpus=2.5"}), x));
  EXPECT_EQ(taken(x).size(), 3u);
  EXPECT_TRUE(pool.fits(request({"gpus=0.5"})));
  EXPECT_FALSE(pool.fits(request({"gpus=0.6"})));
}

TEST_F(PoolTest, FractionAboveOneFollowsThePolicyForItsWholeUnits) {
  make({}, "2x4");
  ASSERT_TRUE(pool.allocate(request({"cpus=2.5 scatter"}), a));
  // Two whole CPUs in two groups, the share in one of them.
  std::vector<uint32_t> cpus = cpus_of(a);
  ASSERT_EQ(cpus.size(), 3u);
  EXPECT_NE(pool.group_of(cpus_id(), cpus[0]), pool.group_of(cpus_id(), cpus[1]));
  EXPECT_EQ(a.back().amount, kAmountUnit / 2);
  Allocation b;
  ASSERT_TRUE(pool.allocate(request({"cpus=3.5 compact"}), b));
  // The share comes from the half-used CPU, not from a fresh one.
  EXPECT_EQ(b.back().unit, a.back().unit);
  EXPECT_EQ(pool.free_amount(cpus_id()), 2 * kAmountUnit);
}

TEST_F(PoolTest, SumsAndMissingResources) {
  make({"mem=sum(100)"});
  ASSERT_TRUE(pool.allocate(request({"mem=60"}), a));
  EXPECT_FALSE(pool.fits(request({"mem=60"})));
  EXPECT_TRUE(pool.could_fit(request({"mem=60"})));
  EXPECT_EQ(pool.why_not(request({"mem=60"}), names), "needs 60 of mem, 40 free now");
  EXPECT_FALSE(pool.could_fit(request({"mem=101"})));
  EXPECT_EQ(pool.why_not(request({"mem=101"}), names), "needs 101 of mem, has 100");
  EXPECT_FALSE(pool.could_fit(request({"gpus=1"})));
  EXPECT_EQ(pool.why_not(request({"gpus=1"}), names), "no resource 'gpus' on this worker");
  EXPECT_EQ(pool.why_not(request({"cpus=9"}), names), "needs 9 of cpus, has 8");
  EXPECT_EQ(pool.why_not(request({"cpus=7"}), names), "");  // mem=60 took one CPU
}

// Random allocations and releases keep the free amounts equal to the total minus what is held.
TEST_F(PoolTest, RandomChurnKeepsAccounts) {
  make({"gpus=[[0,1],[2,3]]", "mem=sum(64)"}, "4x4");
  std::vector<PoolRequest> kinds = {request({"cpus=1"}),           request({"cpus=4 compact!"}),
                                    request({"cpus=3 scatter"}),   request({"cpus=2 tight"}),
                                    request({"gpus=0.5"}),         request({"gpus=2 compact!"}),
                                    request({"mem=16", "cpus=2"}), request({"cpus=5 tight!"}),
                                    request({"cpus=1.5"}),         request({"cpus=2.25 scatter"}),
                                    request({"gpus=1.5 tight"}),   request({"mem=2.5"})};
  std::vector<Allocation> held;
  uint64_t seed = 12345;
  auto next = [&] { return seed = seed * 6364136223846793005ULL + 1442695040888963407ULL; };
  for (int step = 0; step < 5000; ++step) {
    if (!held.empty() && next() % 3 == 0) {
      size_t k = (next() >> 33) % held.size();
      pool.release(held[k]);
      held.erase(held.begin() + static_cast<long>(k));
    } else {
      const PoolRequest& r = kinds[(next() >> 33) % kinds.size()];
      bool fits = pool.fits(r);
      Allocation al;
      ASSERT_EQ(pool.allocate(r, al), fits);
      if (fits) held.push_back(al);
    }
    // Per unit: what is allocated plus what is free is exactly one unit; per allocation, at
    // most one unit of a resource is shared.
    std::map<std::pair<uint32_t, uint32_t>, ResourceAmount> used;
    std::map<uint32_t, ResourceAmount> used_total;
    for (const auto& al : held) {
      std::map<uint32_t, int> shares;
      for (const auto& e : al) {
        used_total[e.resource] += e.amount;
        if (e.unit == kSumUnit) continue;
        used[{e.resource, e.unit}] += e.amount;
        if (e.amount < kAmountUnit) {
          ASSERT_LE(++shares[e.resource], 1) << "two shared units";
        }
      }
    }
    for (const char* name : {"cpus", "gpus", "mem"}) {
      const uint32_t r = names.find(name);
      ASSERT_EQ(pool.free_amount(r) + used_total[r], pool.total_amount(r)) << name;
      for (uint32_t u = 0; u < pool.units(r); ++u) {
        const ResourceAmount taken = used[std::make_pair(r, u)];
        ASSERT_EQ(pool.unit_free(r, u) + taken, kAmountUnit) << name << " unit " << u;
      }
    }
  }
}

}  // namespace
}  // namespace hq
