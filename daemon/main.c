/* moed's main: read the settings, open the model, build the engine over
 * the expert store and the placement plan, and run the server. Every
 * piece lives in the engine library; this file only wires them. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <moe/moeclient.h>

#include "config.h"
#include "engine.h"
#include "log.h"
#include "memcap.h"
#include "model.h"
#include "plan.h"
#include "server.h"
#include "source.h"
#include "topo.h"

struct app {
	struct moe_config cfg;
	const char *config_path;
	bool print_plan;
	struct moe_model *m;
	struct moe_topo *topo;
	struct moe_plan *plan;
	struct moe_source *src;
	struct moe_store *store; /* the source's; NULL for mmap */
	uint64_t cache_bytes;    /* cache-mb, or less to fit the cgroup */
	struct moe_engine *e;
	struct moe_server *srv;
};

static void usage(FILE *f)
{
	fprintf(f, "usage: moed --model MODEL.gguf [options]\n"
		   "Serves the MoE layers of a GGUF model to local programs.\n"
		   "  --config FILE     read settings from FILE (key = value); options here override it\n"
		   "  --print-plan      print the topology and placement plan, then exit\n"
		   "  --version, --help\n");
	moe_config_help(f);
}

/* --config first, so the command line overrides the file. */
static int parse_args(struct app *a, int argc, char **argv)
{
	struct moe_msg err = { "" };

	moe_config_defaults(&a->cfg);
	for (int i = 1; i < argc; i++)
		if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
			a->config_path = argv[i + 1];
		else if (strncmp(argv[i], "--config=", 9) == 0)
			a->config_path = argv[i] + 9;
	if (a->config_path && moe_config_load(&a->cfg, a->config_path, &err)) {
		fprintf(stderr, "moed: %s\n", err.text);
		return -1;
	}
	for (int i = 1; i < argc; i++) {
		char key[64];
		const char *arg = argv[i], *val, *eq;

		if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
			usage(stdout);
			exit(0);
		}
		if (strcmp(arg, "--version") == 0) {
			printf("moed %s\n", MOE_VERSION_STRING);
			exit(0);
		}
		if (strcmp(arg, "--print-plan") == 0) {
			a->print_plan = true;
			continue;
		}
		if (strncmp(arg, "--", 2) || strlen(arg) >= sizeof(key) + 2) {
			fprintf(stderr, "moed: unexpected argument '%s' (try --help)\n", arg);
			return -1;
		}
		eq = strchr(arg, '=');
		snprintf(key, sizeof(key), "%.*s",
			 (int)(eq ? eq - arg - 2 : (long)strlen(arg) - 2), arg + 2);
		if (eq)
			val = eq + 1;
		else if (moe_config_is_flag(key))
			val = "yes";
		else if (i + 1 < argc)
			val = argv[++i];
		else {
			fprintf(stderr, "moed: --%s needs a value\n", key);
			return -1;
		}
		if (strcmp(key, "config") == 0)
			continue;
		if (moe_config_set(&a->cfg, key, val, "command line", &err)) {
			fprintf(stderr, "moed: %s\n", err.text);
			return -1;
		}
	}
	if (!a->cfg.model[0] && a->config_path) {
		fprintf(stderr, "moed: no model: set model = in %s or give --model\n",
			a->config_path);
		return -1;
	}
	if (!a->cfg.model[0]) {
		fprintf(stderr, "moed: no model: give --model or model = in the config file\n");
		return -1;
	}
	return 0;
}

static int open_source(struct app *a, struct moe_expert_src *src,
		       struct moe_msg *err)
{
	struct moe_source_opts so = {
		.io = a->cfg.io,
		.policy = a->cfg.policy,
		.cache_bytes = a->cache_bytes,
		.buffered = a->cfg.buffered,
		.sqpoll = a->cfg.sqpoll,
		.queue_depth = a->cfg.queue_depth,
		.chunk_bytes = a->cfg.chunk_kb << 10,
		.plan = a->plan,
	};
	int rc = moe_source_open(&a->src, a->m, &so, src, err);

	if (!rc)
		a->store = moe_source_store(a->src);
	return rc;
}

/* cache-mb, or what fits under our memory cgroup's limit: a cache
 * filled past the limit would get moed killed by the OOM killer. */
static uint64_t cache_budget(const struct moe_config *cfg)
{
	uint64_t want = cfg->cache_mb << 20, fit;
	struct moe_memcap mc;

	if (!strcmp(cfg->io, "mmap") || moe_memcap_read(&mc))
		return want;
	fit = moe_memcap_fit(&mc, want);
	if (fit < want)
		moe_log(MOE_LOG_WARNING,
			"cache-mb %" PRIu64 " does not fit memory cgroup %s (limit %" PRIu64 " MiB, %" PRIu64 " MiB in use): cache of %" PRIu64 " MiB",
			cfg->cache_mb, mc.path, mc.limit >> 20, mc.usage >> 20,
			fit >> 20);
	return fit;
}

static int build(struct app *a, struct moe_msg *err)
{
	struct moe_topo_opts to = {
		.topology = a->cfg.topology[0] ? a->cfg.topology : NULL,
		.device_path = a->cfg.model,
	};
	struct moe_plan_opts po = {
		.reserve_cores = a->cfg.reserve_cores,
		.device_node = -1,
	};
	struct moe_engine_opts eo = { .threads = a->cfg.threads };
	struct moe_expert_src src;
	int rc;

	rc = moe_model_open(&a->m, a->cfg.model, err);
	if (rc)
		return rc;
	/* cache-mb covers the routers and shared experts as well. */
	if (strcmp(a->cfg.io, "mmap")) {
		rc = moe_source_expert_budget(a->m, cache_budget(&a->cfg),
					      &a->cache_bytes, err);
		if (rc)
			return rc;
	}
	po.cache_bytes = a->cache_bytes;
	if (a->print_plan)
		return moe_plan_report(stdout, a->m, a->cfg.model,
				       to.topology, a->cfg.reserve_cores,
				       a->cache_bytes, err);
	rc = moe_topo_open(&a->topo, &to, err);
	if (!rc)
		rc = moe_plan_new(&a->plan, a->topo, a->m, &po, err);
	if (!rc)
		rc = open_source(a, &src, err);
	if (rc)
		return rc;
	/* Without a configured thread count the plan picks one per core. */
	eo.plan = a->cfg.threads ? NULL : a->plan;
	rc = moe_engine_new(&a->e, a->m, &src, &eo, err);
	if (rc)
		return rc;
	moe_log(MOE_LOG_INFO,
		"serving %s: %s, %u MoE layers, %u experts, %.2f GB of experts; %u workers, cache %s",
		a->cfg.model, moe_arch_name(a->m->arch), a->m->n_moe_layers,
		a->m->max_expert, moe_model_expert_bytes(a->m) / 1e9,
		moe_engine_threads(a->e),
		a->store ? a->cfg.policy : "the page cache (mmap)");
	return 0;
}

static void teardown(struct app *a)
{
	moe_server_free(a->srv);
	moe_engine_free(a->e);
	moe_source_close(a->src);
	moe_plan_free(a->plan);
	moe_topo_close(a->topo);
	moe_model_close(a->m);
}

static struct moe_log_out log_out;

int main(int argc, char **argv)
{
	struct app a = { 0 };
	struct moe_msg err = { "" };
	struct moe_server_deps d;
	int rc;

	if (parse_args(&a, argc, argv))
		return 2;
	moe_server_catch_signals();
	/* Under systemd the journal stamps the time and reads "<N>" as the
	 * priority; elsewhere (a terminal, a file) a timestamp helps. */
	log_out = (struct moe_log_out){ stderr, moe_log_is_journal(2), "moed" };
	moe_log_set(moe_log_stream, &log_out);
	/* One fault repeating (a client sending garbage, a failing disk)
	 * must not flood the journal: 10 lines per call site per 5 s. */
	moe_log_set_ratelimit(10, 5000);
	moe_log_set_level((enum moe_log_level)moe_log_level_by_name(a.cfg.log_level));
	rc = build(&a, &err);
	if (!rc && !a.print_plan) {
		d = (struct moe_server_deps){ a.config_path, &a.cfg, a.m, a.e,
					      a.store, a.plan, argc, argv };
		rc = moe_server_new(&a.srv, &d, &err);
		if (!rc) {
			moe_log(MOE_LOG_INFO, "listening on %s", a.cfg.socket);
			rc = moe_server_run(a.srv);
		}
	}
	if (rc)
		moe_log(MOE_LOG_ERR, "%s", err.text[0] ? err.text : moe_strerror(rc));
	teardown(&a);
	return rc ? 1 : 0;
}
