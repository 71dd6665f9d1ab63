/* tier: picks the isolation tier at start-up. Probes what the host allows (isolation.h), builds
 * the strongest tier's jail PYEXEC_ISOLATION accepts and runs a self-check script through it
 * end to end; when no accepted tier works, says why and what to do. */
#ifndef PYEXEC_TIER_H
#define PYEXEC_TIER_H

#include <jansson.h>
#include <stdbool.h>

#include "cgroup.h"
#include "config.h"
#include "execute.h"
#include "isolation.h"
#include "jail.h"
#include "supervisor.h"

struct tier {
	struct jail *jail;   /* NULL when no allowed tier works here; problem says why */
	enum jail_tier kind; /* when jail is set */
	bool ok;             /* the self-check passed */
	char problem[2048];
	struct isolation iso;
	json_t *report; /* what tier_choose learned, for the log and /healthz */
};

/* What choosing needs: the self-check runs with exec's settings, in the jail being tried. */
struct tier_env {
	const struct config *cfg;
	const struct cgroup *cg;
	struct supervisor *sup;
	const struct execute *exec;
};

void tier_choose(struct tier *t, const struct tier_env *env);
/* How runs are limited here, in words, for /healthz. */
const char *tier_limits_name(const struct tier *t, const struct cgroup *cg);
void tier_free(struct tier *t);

#endif
