// The seed's (cf-modkit 0.6.4) backend tests, ported.
#include <gtest/gtest.h>

#include <sstream>

#include "test_support.hpp"

using namespace modkit;
using namespace modkit::testing;

TEST(SeedPort, ConfigBuilderLeavesEverythingElseEmpty) {
  OopModuleConfig config("test_module", BackendKind::LocalProcess);
  EXPECT_EQ(config.name, "test_module");
  EXPECT_EQ(config.backend, BackendKind::LocalProcess);
  EXPECT_FALSE(config.binary.has_value());
  EXPECT_TRUE(config.args.empty());
  EXPECT_TRUE(config.env.empty());
  EXPECT_FALSE(config.working_directory.has_value());
  EXPECT_FALSE(config.version.has_value());
}

TEST(SeedPort, BackendKindEquality) {
  EXPECT_EQ(BackendKind::LocalProcess, BackendKind::LocalProcess);
  EXPECT_NE(BackendKind::LocalProcess, BackendKind::K8s);
  EXPECT_NE(BackendKind::Static, BackendKind::Mock);
}

TEST(SeedPort, HandlePrintsEveryField) {
  InstanceHandle handle;
  handle.module = "printer";
  handle.instance_id = new_uuid_v7();
  handle.backend = BackendKind::LocalProcess;
  handle.pid = 4242;
  handle.created_at = std::chrono::steady_clock::now();
  std::ostringstream text;
  text << handle;
  EXPECT_NE(text.str().find("printer"), std::string::npos);
  EXPECT_NE(text.str().find(handle.instance_id), std::string::npos);
  EXPECT_NE(text.str().find("LocalProcess"), std::string::npos);
  EXPECT_NE(text.str().find("4242"), std::string::npos);
  EXPECT_NE(text.str().find("created_at"), std::string::npos);
}

TEST(SeedPort, SpawnRequiresBinary) {
  Fixture f;
  auto result = f.backend->spawn_instance(OopModuleConfig("test_module", BackendKind::LocalProcess));
  ASSERT_FALSE(result);
  EXPECT_NE(result.error().message.find("executable_path must be set"), std::string::npos);
}

TEST(SeedPort, SpawnRequiresLocalProcessKind) {
  Fixture f;
  OopModuleConfig config("test_module", BackendKind::K8s);
  config.binary = test_child_path();
  auto result = f.backend->spawn_instance(config);
  ASSERT_FALSE(result);
  EXPECT_NE(result.error().message.find("can only spawn LocalProcess"), std::string::npos);
}

TEST(SeedPort, SpawnListStopLifecycle) {
  Fixture f;
  auto handle = f.backend->spawn_instance(child_config("test_module", {"sleep", "10"}));
  ASSERT_TRUE(handle) << handle.error();
  EXPECT_EQ(handle->module, "test_module");
  EXPECT_EQ(handle->instance_id.size(), 36u);
  EXPECT_EQ(handle->backend, BackendKind::LocalProcess);
  ASSERT_TRUE(handle->pid.has_value());

  auto listed = f.backend->list_instances("test_module");
  ASSERT_TRUE(listed);
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_EQ((*listed)[0].instance_id, handle->instance_id);

  auto stopped = f.backend->stop_instance(*handle);
  ASSERT_TRUE(stopped);
  ASSERT_TRUE(stopped->has_value());
  EXPECT_EQ((*stopped)->kind, ExitStatus::Kind::Signaled);
  EXPECT_EQ(f.backend->list_instances("test_module")->size(), 0u);
}

TEST(SeedPort, ListFiltersByModule) {
  Fixture f;
  auto a = f.backend->spawn_instance(child_config("module_a", {"sleep", "10"}));
  auto b = f.backend->spawn_instance(child_config("module_b", {"sleep", "10"}));
  ASSERT_TRUE(a && b);
  auto listed_a = f.backend->list_instances("module_a");
  auto listed_b = f.backend->list_instances("module_b");
  ASSERT_EQ(listed_a->size(), 1u);
  ASSERT_EQ(listed_b->size(), 1u);
  EXPECT_EQ((*listed_a)[0].module, "module_a");
  EXPECT_EQ((*listed_b)[0].module, "module_b");
  EXPECT_TRUE(f.backend->stop_instance(*a));
  EXPECT_TRUE(f.backend->stop_instance(*b));
}

TEST(SeedPort, StoppingAnUnknownInstanceSucceeds) {
  Fixture f;
  InstanceHandle handle;
  handle.module = "test_module";
  handle.instance_id = new_uuid_v7();
  auto result = f.backend->stop_instance(handle);
  ASSERT_TRUE(result);
  EXPECT_FALSE(result->has_value());
}

TEST(SeedPort, EmptyList) {
  Fixture f;
  auto listed = f.backend->list_instances("nonexistent_module");
  ASSERT_TRUE(listed);
  EXPECT_TRUE(listed->empty());
}
