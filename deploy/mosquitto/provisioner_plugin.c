/*
 * provisioner_plugin.c - the MQTT bridge's mosquitto plugin (v5 plugin API, mosquitto 2.0).
 *
 * Why a plugin that decides nothing: every rule of the Cloud IoT device plane (JWT checks,
 * which topics a device owns, gateways, configs, commands, expiry) lives once, in Python,
 * in the registry server's device plane. The EMQX / mosquitto-go-auth / VerneMQ hooks use
 * the same code. This plugin only carries mosquitto's events to the device plane over HTTP
 * (the /bridge/v1 contract) and applies the answers:
 *
 *   BASIC_AUTH         -> POST /bridge/v1/connect  (allow or "not authorized")
 *   ACL SUBSCRIBE      -> POST /bridge/v1/subscribe (deliveries, e.g. the latest config)
 *   ACL WRITE attach/detach -> POST /bridge/v1/control (new pattern lists, errors, kick)
 *   ACL WRITE other    -> local: the topic must match the last allowed publish patterns and
 *                         QoS must be 0 or 1, else deny and disconnect (as Cloud IoT does)
 *   ACL READ           -> local: the topic must match the last allowed subscribe patterns
 *   MESSAGE            -> buffered (payload copied) and sent in the next /bridge/v1/sync
 *   TICK (>= 100 ms)   -> POST /bridge/v1/sync: buffered messages and disconnects out,
 *                         kicks (expired JWTs, removed devices) and deliveries back
 *   DISCONNECT         -> remembered for the next sync; the connection's state dropped
 *
 * Per-connection state is keyed by the `struct mosquitto *` pointer, not the client id, so
 * a device reconnecting with the same id never inherits or loses another connection's
 * state. When the device plane cannot be reached, connects are refused (never allowed by
 * default) and buffered messages wait for the next sync (bounded).
 *
 * Options (mosquitto.conf):
 *   plugin_opt_url          the registry server, e.g. http://127.0.0.1:8711 (required)
 *   plugin_opt_token_file   file holding the bridge token (read once; never logged)
 *   plugin_opt_timeout_ms   HTTP timeout per request (default 3000)
 *   plugin_opt_max_buffer   messages kept while the device plane is away (default 10000)
 */

#include <ctype.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <openssl/bio.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#define LOG_PREFIX "provisioner: "
#define NBUCKETS 4096
#define SYNC_INTERVAL_NS 100000000L /* 100 ms */
#define SYNC_BATCH 200
#define SYNC_MAX_BYTES (8 * 1024 * 1024) /* raw payload bytes per sync request */
#define BACKOFF_MAX_MS 5000

/* ---------------------------------------------------------------- state */

struct conn {
	struct mosquitto *client;
	char *client_id;
	long long session;
	char **pub;
	int npub;
	char **sub;
	int nsub;
	struct conn *next;
};

struct pending_msg {
	char *client_id;
	long long session;
	char *topic;
	unsigned char *payload;
	uint32_t len;
	int qos;
};

struct pending_disc {
	char *client_id;
	long long session;
};

struct growbuf {
	char *data;
	size_t len;
};

static mosquitto_plugin_id_t *plugin_id;
static CURL *curl;
static struct curl_slist *headers;
static char *base_url;
static long timeout_ms = 3000;
static size_t max_buffer = 10000;

static struct conn *buckets[NBUCKETS];
static size_t nconns;

static struct pending_msg *msgs;
static size_t nmsgs, cap_msgs;
static struct pending_disc *discs;
static size_t ndiscs, cap_discs;
static size_t dropped;

static long long last_sync_ns;
static long long next_try_ns;
static long backoff_ms;

/* ---------------------------------------------------------------- small helpers */

static long long mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static char *xstrdup(const char *s)
{
	return s ? mosquitto_strdup(s) : NULL;
}

static size_t bucket_of(const struct mosquitto *client)
{
	uintptr_t p = (uintptr_t)client;
	return (size_t)((p >> 4) ^ (p >> 16)) % NBUCKETS;
}

static void free_patterns(char **list, int n)
{
	for (int i = 0; i < n; i++) {
		mosquitto_free(list[i]);
	}
	mosquitto_free(list);
}

static void free_conn(struct conn *c)
{
	mosquitto_free(c->client_id);
	free_patterns(c->pub, c->npub);
	free_patterns(c->sub, c->nsub);
	mosquitto_free(c);
}

static struct conn *find_conn(const struct mosquitto *client)
{
	for (struct conn *c = buckets[bucket_of(client)]; c; c = c->next) {
		if (c->client == client) {
			return c;
		}
	}
	return NULL;
}

/* Detach the state of `client` from the table and return it (NULL if none). */
static struct conn *take_conn(const struct mosquitto *client)
{
	struct conn **pp = &buckets[bucket_of(client)];
	for (; *pp; pp = &(*pp)->next) {
		if ((*pp)->client == client) {
			struct conn *c = *pp;
			*pp = c->next;
			nconns--;
			return c;
		}
	}
	return NULL;
}

static void put_conn(struct conn *c)
{
	size_t b = bucket_of(c->client);
	c->next = buckets[b];
	buckets[b] = c;
	nconns++;
}

/* The live connection with this client id and session (kicks name both, so a kick for
 * an old session never closes the device's newer connection). */
static struct conn *find_session(const char *client_id, long long session)
{
	for (size_t b = 0; b < NBUCKETS; b++) {
		for (struct conn *c = buckets[b]; c; c = c->next) {
			if (c->session == session && strcmp(c->client_id, client_id) == 0) {
				return c;
			}
		}
	}
	return NULL;
}

static bool matches_any(char **patterns, int n, const char *topic)
{
	for (int i = 0; i < n; i++) {
		bool result = false;
		if (mosquitto_topic_matches_sub(patterns[i], topic, &result) == MOSQ_ERR_SUCCESS && result) {
			return true;
		}
	}
	return false;
}

/* Replace *list with the strings of a JSON array; a missing or malformed array keeps the
 * old list (returns false). */
static bool load_patterns(const cJSON *array, char ***list, int *n)
{
	if (!cJSON_IsArray(array)) {
		return false;
	}
	int count = cJSON_GetArraySize(array);
	char **out = mosquitto_calloc((size_t)(count > 0 ? count : 1), sizeof(char *));
	if (!out) {
		return false;
	}
	int k = 0;
	const cJSON *item;
	cJSON_ArrayForEach(item, array)
	{
		if (cJSON_IsString(item) && item->valuestring) {
			out[k++] = xstrdup(item->valuestring);
		}
	}
	free_patterns(*list, *n);
	*list = out;
	*n = k;
	return true;
}

static bool is_control_topic(const char *topic)
{
	/* /devices/{id}/attach or /devices/{id}/detach, exactly */
	if (strncmp(topic, "/devices/", 9) != 0) {
		return false;
	}
	const char *id = topic + 9;
	const char *slash = strchr(id, '/');
	if (!slash || slash == id) {
		return false;
	}
	return strcmp(slash, "/attach") == 0 || strcmp(slash, "/detach") == 0;
}

/* ---------------------------------------------------------------- base64 (standard) */

static const char b64chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static char *b64_encode(const unsigned char *data, size_t len)
{
	size_t outlen = 4 * ((len + 2) / 3);
	char *out = mosquitto_malloc(outlen + 1);
	if (!out) {
		return NULL;
	}
	size_t i = 0, j = 0;
	while (i + 2 < len) {
		uint32_t v = ((uint32_t)data[i] << 16) | ((uint32_t)data[i + 1] << 8) | data[i + 2];
		out[j++] = b64chars[(v >> 18) & 63];
		out[j++] = b64chars[(v >> 12) & 63];
		out[j++] = b64chars[(v >> 6) & 63];
		out[j++] = b64chars[v & 63];
		i += 3;
	}
	if (i < len) {
		uint32_t v = (uint32_t)data[i] << 16;
		if (i + 1 < len) {
			v |= (uint32_t)data[i + 1] << 8;
		}
		out[j++] = b64chars[(v >> 18) & 63];
		out[j++] = b64chars[(v >> 12) & 63];
		out[j++] = (i + 1 < len) ? b64chars[(v >> 6) & 63] : '=';
		out[j++] = '=';
	}
	out[j] = '\0';
	return out;
}

static int b64_value(int ch)
{
	if (ch >= 'A' && ch <= 'Z') return ch - 'A';
	if (ch >= 'a' && ch <= 'z') return ch - 'a' + 26;
	if (ch >= '0' && ch <= '9') return ch - '0' + 52;
	if (ch == '+' || ch == '-') return 62;
	if (ch == '/' || ch == '_') return 63;
	return -1;
}

/* Decode standard (or URL-safe) base64; padding optional. Returns NULL on bad input. */
static unsigned char *b64_decode(const char *in, size_t *outlen)
{
	size_t len = strlen(in);
	unsigned char *out = mosquitto_malloc(len / 4 * 3 + 4);
	if (!out) {
		return NULL;
	}
	uint32_t acc = 0;
	int bits = 0;
	size_t j = 0;
	for (size_t i = 0; i < len; i++) {
		if (in[i] == '=') {
			break;
		}
		int v = b64_value((unsigned char)in[i]);
		if (v < 0) {
			mosquitto_free(out);
			return NULL;
		}
		acc = (acc << 6) | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			out[j++] = (unsigned char)((acc >> bits) & 0xFF);
		}
	}
	*outlen = j;
	return out;
}

/* ---------------------------------------------------------------- HTTP */

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	struct growbuf *buf = userdata;
	size_t n = size * nmemb;
	if (buf->len + n > 16 * 1024 * 1024) {
		return 0; /* an answer this large is not the device plane's */
	}
	char *p = realloc(buf->data, buf->len + n + 1);
	if (!p) {
		return 0;
	}
	memcpy(p + buf->len, ptr, n);
	buf->data = p;
	buf->len += n;
	buf->data[buf->len] = '\0';
	return n;
}

/* POST `body` as JSON to base_url + path; returns the parsed 200 answer or NULL (logged,
 * without the request body: it may hold a device's JWT). `*status` gets the HTTP status
 * (0 when there was no answer). */
static cJSON *post_status(const char *path, cJSON *body, long *status_out)
{
	*status_out = 0;
	char *text = cJSON_PrintUnformatted(body);
	if (!text) {
		return NULL;
	}
	size_t urllen = strlen(base_url) + strlen(path) + 1;
	char *url = mosquitto_malloc(urllen);
	if (!url) {
		cJSON_free(text);
		return NULL;
	}
	snprintf(url, urllen, "%s%s", base_url, path);

	struct growbuf buf = {NULL, 0};
	curl_easy_setopt(curl, CURLOPT_URL, url);
	curl_easy_setopt(curl, CURLOPT_POSTFIELDS, text);
	curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE, (long)strlen(text));
	curl_easy_setopt(curl, CURLOPT_WRITEDATA, &buf);
	CURLcode rc = curl_easy_perform(curl);
	/* the request body may hold a JWT: wipe it before freeing */
	memset(text, 0, strlen(text));
	cJSON_free(text);
	mosquitto_free(url);

	cJSON *answer = NULL;
	if (rc != CURLE_OK) {
		mosquitto_log_printf(MOSQ_LOG_WARNING, LOG_PREFIX "device plane %s unreachable: %s",
		                     path, curl_easy_strerror(rc));
	} else {
		long status = 0;
		curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
		*status_out = status;
		if (status != 200) {
			mosquitto_log_printf(MOSQ_LOG_WARNING, LOG_PREFIX "device plane %s answered HTTP %ld",
			                     path, status);
		} else {
			answer = buf.data ? cJSON_Parse(buf.data) : NULL;
			if (!cJSON_IsObject(answer)) {
				mosquitto_log_printf(MOSQ_LOG_WARNING, LOG_PREFIX "device plane %s: answer is not a JSON object", path);
				cJSON_Delete(answer);
				answer = NULL;
			}
		}
	}
	free(buf.data);
	return answer;
}

static cJSON *post_json(const char *path, cJSON *body)
{
	long status;
	return post_status(path, body, &status);
}

static bool json_true(const cJSON *obj, const char *key)
{
	return cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(obj, key));
}

static void add_b64(cJSON *obj, const char *key, const void *data, size_t len)
{
	char *enc = b64_encode(data, len);
	cJSON_AddStringToObject(obj, key, enc ? enc : "");
	mosquitto_free(enc);
}

/* Publish each {topic, payload_b64, qos} of `array` to `client_id` (or to the item's own
 * "client_id" when `client_id` is NULL). */
static void deliver_all(const cJSON *array, const char *client_id)
{
	const cJSON *item;
	if (!cJSON_IsArray(array)) {
		return;
	}
	cJSON_ArrayForEach(item, array)
	{
		const cJSON *topic = cJSON_GetObjectItemCaseSensitive(item, "topic");
		const cJSON *payload = cJSON_GetObjectItemCaseSensitive(item, "payload_b64");
		const cJSON *qos = cJSON_GetObjectItemCaseSensitive(item, "qos");
		const char *to = client_id;
		if (!to) {
			const cJSON *cid = cJSON_GetObjectItemCaseSensitive(item, "client_id");
			to = cJSON_IsString(cid) ? cid->valuestring : NULL;
		}
		if (!to || !cJSON_IsString(topic) || !cJSON_IsString(payload)) {
			continue;
		}
		size_t len = 0;
		unsigned char *data = b64_decode(payload->valuestring, &len);
		if (!data) {
			mosquitto_log_printf(MOSQ_LOG_WARNING, LOG_PREFIX "bad payload_b64 for %s", topic->valuestring);
			continue;
		}
		int q = cJSON_IsNumber(qos) ? qos->valueint : 1;
		if (q < 0 || q > 1) {
			q = 1;
		}
		int rc = mosquitto_broker_publish_copy(to, topic->valuestring, (int)len, data, q, false, NULL);
		if (rc != MOSQ_ERR_SUCCESS) {
			mosquitto_log_printf(MOSQ_LOG_WARNING, LOG_PREFIX "delivery to %s on %s failed (%d)", to,
			                     topic->valuestring, rc);
		}
		mosquitto_free(data);
	}
}

static void kick(const struct conn *c, const char *why)
{
	mosquitto_log_printf(MOSQ_LOG_NOTICE, LOG_PREFIX "disconnecting %s (session %lld): %s",
	                     c->client_id, c->session, why);
	mosquitto_kick_client_by_clientid(c->client_id, false);
}

/* ---------------------------------------------------------------- sync */

/* Forget the first `n` buffered messages (they were delivered, or refused for good). */
static void drop_pending_msgs(size_t n)
{
	if (n == 0) {
		return;
	}
	for (size_t i = 0; i < n; i++) {
		mosquitto_free(msgs[i].client_id);
		mosquitto_free(msgs[i].topic);
		mosquitto_free(msgs[i].payload);
	}
	memmove(msgs, msgs + n, (nmsgs - n) * sizeof(*msgs));
	nmsgs -= n;
}

static void clear_pending_msgs(void)
{
	drop_pending_msgs(nmsgs);
}

static void clear_pending_discs(void)
{
	for (size_t i = 0; i < ndiscs; i++) {
		mosquitto_free(discs[i].client_id);
	}
	ndiscs = 0;
}

/* One /bridge/v1/sync round; true when it went through. */
static bool sync_once(void)
{
	/* A batch stays well under the plane's request limit: at most SYNC_BATCH messages
	 * and SYNC_MAX_BYTES of payload (at least one message, whatever its size). */
	size_t batch = 0, bytes = 0;
	while (batch < nmsgs && batch < SYNC_BATCH && (batch == 0 || bytes + msgs[batch].len <= SYNC_MAX_BYTES)) {
		bytes += msgs[batch].len;
		batch++;
	}
	cJSON *body = cJSON_CreateObject();
	cJSON *jm = cJSON_AddArrayToObject(body, "messages");
	cJSON *jd = cJSON_AddArrayToObject(body, "disconnected");
	for (size_t i = 0; i < batch; i++) {
		cJSON *m = cJSON_CreateObject();
		cJSON_AddStringToObject(m, "client_id", msgs[i].client_id);
		cJSON_AddNumberToObject(m, "session", (double)msgs[i].session);
		cJSON_AddStringToObject(m, "topic", msgs[i].topic);
		add_b64(m, "payload_b64", msgs[i].payload, msgs[i].len);
		cJSON_AddNumberToObject(m, "qos", msgs[i].qos);
		cJSON_AddItemToArray(jm, m);
	}
	for (size_t i = 0; i < ndiscs; i++) {
		cJSON *d = cJSON_CreateObject();
		cJSON_AddStringToObject(d, "client_id", discs[i].client_id);
		cJSON_AddNumberToObject(d, "session", (double)discs[i].session);
		cJSON_AddItemToArray(jd, d);
	}
	long status = 0;
	cJSON *answer = post_status("/bridge/v1/sync", body, &status);
	cJSON_Delete(body);
	if (!answer && status == 400) {
		/* The plane refused the batch as malformed: sending it again cannot help, and
		 * keeping it would hold back every later message. */
		mosquitto_log_printf(MOSQ_LOG_ERR, LOG_PREFIX "the device plane refused a sync of %zu messages as malformed; dropped",
		                     batch);
		drop_pending_msgs(batch);
		if (batch == 0) {
			clear_pending_discs(); /* then the disconnects were what it refused */
		}
		return true;
	}
	if (!answer) {
		backoff_ms = backoff_ms ? backoff_ms * 2 : 100;
		if (backoff_ms > BACKOFF_MAX_MS) {
			backoff_ms = BACKOFF_MAX_MS;
		}
		next_try_ns = mono_ns() + backoff_ms * 1000000LL;
		return false; /* keep everything for the next sync */
	}
	if (backoff_ms) {
		mosquitto_log_printf(MOSQ_LOG_NOTICE, LOG_PREFIX "device plane reachable again");
	}
	backoff_ms = 0;
	next_try_ns = 0;
	drop_pending_msgs(batch);
	clear_pending_discs();
	if (dropped) {
		mosquitto_log_printf(MOSQ_LOG_WARNING, LOG_PREFIX "%zu device messages were dropped while the device plane was away",
		                     dropped);
		dropped = 0;
	}

	const cJSON *kicks = cJSON_GetObjectItemCaseSensitive(answer, "kick");
	const cJSON *item;
	cJSON_ArrayForEach(item, kicks)
	{
		const cJSON *cid = cJSON_GetObjectItemCaseSensitive(item, "client_id");
		const cJSON *ses = cJSON_GetObjectItemCaseSensitive(item, "session");
		if (!cJSON_IsString(cid) || !cJSON_IsNumber(ses)) {
			continue;
		}
		struct conn *c = find_session(cid->valuestring, (long long)ses->valuedouble);
		if (c) {
			kick(c, "the device plane closed the session");
		}
	}
	deliver_all(cJSON_GetObjectItemCaseSensitive(answer, "deliver"), NULL);
	cJSON_Delete(answer);
	return true;
}

/* Sync now (unless backing off): a round, and more while a backlog remains (bounded, so
 * the broker's loop is not held for long). */
static void sync_now(void)
{
	long long now = mono_ns();
	last_sync_ns = now;
	if (now < next_try_ns) {
		return; /* backing off after a failure */
	}
	for (int round = 0; round < 16; round++) {
		if (!sync_once() || nmsgs == 0) {
			return;
		}
	}
}

/* ---------------------------------------------------------------- callbacks */

static char *client_cert_pem(struct mosquitto *client)
{
	X509 *cert = mosquitto_client_certificate(client);
	if (!cert) {
		return NULL;
	}
	char *pem = NULL;
	BIO *bio = BIO_new(BIO_s_mem());
	if (bio && PEM_write_bio_X509(bio, cert)) {
		char *data = NULL;
		long len = BIO_get_mem_data(bio, &data);
		pem = mosquitto_malloc((size_t)len + 1);
		if (pem) {
			memcpy(pem, data, (size_t)len);
			pem[len] = '\0';
		}
	}
	BIO_free(bio);
	X509_free(cert);
	return pem;
}

static int on_basic_auth(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_basic_auth *ed = event_data;
	(void)event;
	(void)userdata;
	const char *client_id = mosquitto_client_id(ed->client);
	if (!client_id) {
		return MOSQ_ERR_AUTH;
	}
	cJSON *body = cJSON_CreateObject();
	cJSON_AddStringToObject(body, "client_id", client_id);
	if (ed->username) {
		cJSON_AddStringToObject(body, "username", ed->username);
	} else {
		cJSON_AddNullToObject(body, "username");
	}
	if (ed->password) {
		cJSON_AddStringToObject(body, "password", ed->password);
	} else {
		cJSON_AddNullToObject(body, "password");
	}
	char *pem = client_cert_pem(ed->client);
	if (pem) {
		cJSON_AddStringToObject(body, "cert_pem", pem);
		mosquitto_free(pem);
	} else {
		cJSON_AddNullToObject(body, "cert_pem");
	}
	const char *address = mosquitto_client_address(ed->client);
	if (address) {
		cJSON_AddStringToObject(body, "address", address);
	} else {
		cJSON_AddNullToObject(body, "address");
	}
	cJSON *answer = post_json("/bridge/v1/connect", body);
	cJSON_Delete(body);
	if (!answer) {
		mosquitto_log_printf(MOSQ_LOG_NOTICE, LOG_PREFIX "refused %s: the device plane cannot be reached",
		                     client_id);
		return MOSQ_ERR_AUTH;
	}
	if (!json_true(answer, "allow")) {
		const cJSON *reason = cJSON_GetObjectItemCaseSensitive(answer, "reason");
		mosquitto_log_printf(MOSQ_LOG_NOTICE, LOG_PREFIX "refused %s: %s", client_id,
		                     cJSON_IsString(reason) ? reason->valuestring : "not authorized");
		cJSON_Delete(answer);
		return MOSQ_ERR_AUTH;
	}
	const cJSON *session = cJSON_GetObjectItemCaseSensitive(answer, "session");
	struct conn *c = mosquitto_calloc(1, sizeof(*c));
	if (!c || !cJSON_IsNumber(session)) {
		mosquitto_free(c);
		cJSON_Delete(answer);
		mosquitto_log_printf(MOSQ_LOG_WARNING, LOG_PREFIX "refused %s: malformed answer from the device plane",
		                     client_id);
		return MOSQ_ERR_AUTH;
	}
	c->client = ed->client;
	c->client_id = xstrdup(client_id);
	c->session = (long long)session->valuedouble;
	load_patterns(cJSON_GetObjectItemCaseSensitive(answer, "publish"), &c->pub, &c->npub);
	load_patterns(cJSON_GetObjectItemCaseSensitive(answer, "subscribe"), &c->sub, &c->nsub);
	cJSON_Delete(answer);
	struct conn *old = take_conn(ed->client);
	if (old) {
		free_conn(old);
	}
	put_conn(c);
	mosquitto_log_printf(MOSQ_LOG_INFO, LOG_PREFIX "admitted %s (session %lld)", c->client_id, c->session);
	return MOSQ_ERR_SUCCESS;
}

static int acl_subscribe(struct conn *c, struct mosquitto_evt_acl_check *ed)
{
	cJSON *body = cJSON_CreateObject();
	cJSON_AddStringToObject(body, "client_id", c->client_id);
	cJSON_AddNumberToObject(body, "session", (double)c->session);
	cJSON_AddStringToObject(body, "topic", ed->topic);
	cJSON_AddNumberToObject(body, "qos", ed->qos);
	cJSON *answer = post_json("/bridge/v1/subscribe", body);
	cJSON_Delete(body);
	if (!answer) {
		return MOSQ_ERR_ACL_DENIED;
	}
	bool allow = json_true(answer, "allow");
	if (allow) {
		deliver_all(cJSON_GetObjectItemCaseSensitive(answer, "deliver"), c->client_id);
	} else {
		mosquitto_log_printf(MOSQ_LOG_NOTICE, LOG_PREFIX "%s may not subscribe to %s", c->client_id, ed->topic);
	}
	cJSON_Delete(answer);
	return allow ? MOSQ_ERR_SUCCESS : MOSQ_ERR_ACL_DENIED;
}

static int acl_control(struct conn *c, struct mosquitto_evt_acl_check *ed)
{
	cJSON *body = cJSON_CreateObject();
	cJSON_AddStringToObject(body, "client_id", c->client_id);
	cJSON_AddNumberToObject(body, "session", (double)c->session);
	cJSON_AddStringToObject(body, "topic", ed->topic);
	add_b64(body, "payload_b64", ed->payload, ed->payloadlen);
	cJSON_AddNumberToObject(body, "qos", ed->qos);
	cJSON *answer = post_json("/bridge/v1/control", body);
	cJSON_Delete(body);
	if (!answer) {
		return MOSQ_ERR_ACL_DENIED;
	}
	bool allow = json_true(answer, "allow");
	load_patterns(cJSON_GetObjectItemCaseSensitive(answer, "publish"), &c->pub, &c->npub);
	load_patterns(cJSON_GetObjectItemCaseSensitive(answer, "subscribe"), &c->sub, &c->nsub);
	deliver_all(cJSON_GetObjectItemCaseSensitive(answer, "deliver"), c->client_id);
	if (json_true(answer, "kick")) {
		kick(c, "control message refused");
	}
	cJSON_Delete(answer);
	return allow ? MOSQ_ERR_SUCCESS : MOSQ_ERR_ACL_DENIED;
}

static int on_acl_check(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_acl_check *ed = event_data;
	(void)event;
	(void)userdata;
	struct conn *c = find_conn(ed->client);
	if (ed->access == MOSQ_ACL_UNSUBSCRIBE) {
		return MOSQ_ERR_SUCCESS;
	}
	if (!c) {
		return MOSQ_ERR_ACL_DENIED;
	}
	switch (ed->access) {
	case MOSQ_ACL_SUBSCRIBE:
		return acl_subscribe(c, ed);
	case MOSQ_ACL_READ:
		return matches_any(c->sub, c->nsub, ed->topic) ? MOSQ_ERR_SUCCESS : MOSQ_ERR_ACL_DENIED;
	case MOSQ_ACL_WRITE:
		if (ed->qos > 1) {
			kick(c, "QoS 2 is not supported");
			return MOSQ_ERR_ACL_DENIED;
		}
		if (is_control_topic(ed->topic)) {
			return acl_control(c, ed);
		}
		if (!matches_any(c->pub, c->npub, ed->topic)) {
			mosquitto_log_printf(MOSQ_LOG_NOTICE, LOG_PREFIX "%s may not publish to %s", c->client_id, ed->topic);
			kick(c, "publish to a topic it does not own");
			return MOSQ_ERR_ACL_DENIED;
		}
		return MOSQ_ERR_SUCCESS;
	default:
		return MOSQ_ERR_ACL_DENIED;
	}
}

static int on_message(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_message *ed = event_data;
	(void)event;
	(void)userdata;
	if (!ed->client) {
		return MOSQ_ERR_SUCCESS;
	}
	struct conn *c = find_conn(ed->client);
	if (!c || is_control_topic(ed->topic)) {
		return MOSQ_ERR_SUCCESS; /* control messages went to the plane synchronously */
	}
	if (nmsgs >= max_buffer) {
		dropped++;
		return MOSQ_ERR_SUCCESS;
	}
	if (nmsgs == cap_msgs) {
		size_t cap = cap_msgs ? cap_msgs * 2 : 256;
		struct pending_msg *p = mosquitto_realloc(msgs, cap * sizeof(*p));
		if (!p) {
			dropped++;
			return MOSQ_ERR_SUCCESS;
		}
		msgs = p;
		cap_msgs = cap;
	}
	struct pending_msg *m = &msgs[nmsgs];
	m->client_id = xstrdup(c->client_id);
	m->session = c->session;
	m->topic = xstrdup(ed->topic);
	m->len = ed->payloadlen;
	m->payload = mosquitto_malloc(ed->payloadlen ? ed->payloadlen : 1);
	if (!m->client_id || !m->topic || !m->payload) {
		mosquitto_free(m->client_id);
		mosquitto_free(m->topic);
		mosquitto_free(m->payload);
		dropped++;
		return MOSQ_ERR_SUCCESS;
	}
	if (ed->payloadlen) {
		memcpy(m->payload, ed->payload, ed->payloadlen);
	}
	m->qos = ed->qos;
	nmsgs++;
	if (nmsgs >= SYNC_BATCH && nmsgs % SYNC_BATCH == 0) {
		sync_now();
	}
	return MOSQ_ERR_SUCCESS;
}

static int on_tick(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)event_data;
	(void)userdata;
	long long now = mono_ns();
	if (now - last_sync_ns < SYNC_INTERVAL_NS) {
		return MOSQ_ERR_SUCCESS;
	}
	if (nconns == 0 && nmsgs == 0 && ndiscs == 0) {
		last_sync_ns = now;
		return MOSQ_ERR_SUCCESS; /* nothing connected: nothing to expire or deliver */
	}
	sync_now();
	return MOSQ_ERR_SUCCESS;
}

static int on_disconnect(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_disconnect *ed = event_data;
	(void)event;
	(void)userdata;
	struct conn *c = take_conn(ed->client);
	if (!c) {
		return MOSQ_ERR_SUCCESS;
	}
	if (ndiscs == cap_discs) {
		size_t cap = cap_discs ? cap_discs * 2 : 64;
		struct pending_disc *p = mosquitto_realloc(discs, cap * sizeof(*p));
		if (!p) {
			free_conn(c);
			return MOSQ_ERR_SUCCESS;
		}
		discs = p;
		cap_discs = cap;
	}
	discs[ndiscs].client_id = c->client_id;
	discs[ndiscs].session = c->session;
	ndiscs++;
	c->client_id = NULL; /* now owned by discs */
	free_conn(c);
	return MOSQ_ERR_SUCCESS;
}

/* ---------------------------------------------------------------- init / cleanup */

static char *read_token(const char *path)
{
	FILE *f = fopen(path, "r");
	if (!f) {
		mosquitto_log_printf(MOSQ_LOG_ERR, LOG_PREFIX "cannot read plugin_opt_token_file %s: %s", path,
		                     strerror(errno));
		return NULL;
	}
	char buf[1024];
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	while (n > 0 && isspace((unsigned char)buf[n - 1])) {
		buf[--n] = '\0';
	}
	char *start = buf;
	while (*start && isspace((unsigned char)*start)) {
		start++;
	}
	if (!*start) {
		mosquitto_log_printf(MOSQ_LOG_ERR, LOG_PREFIX "plugin_opt_token_file %s is empty", path);
		return NULL;
	}
	char *token = xstrdup(start);
	memset(buf, 0, sizeof(buf));
	return token;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	for (int i = 0; i < supported_version_count; i++) {
		if (supported_versions[i] == 5) {
			return 5;
		}
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata, struct mosquitto_opt *options,
                          int option_count)
{
	const char *url = NULL, *token_file = NULL;
	(void)userdata;
	plugin_id = identifier;
	for (int i = 0; i < option_count; i++) {
		if (strcmp(options[i].key, "url") == 0) {
			url = options[i].value;
		} else if (strcmp(options[i].key, "token_file") == 0) {
			token_file = options[i].value;
		} else if (strcmp(options[i].key, "timeout_ms") == 0) {
			timeout_ms = strtol(options[i].value, NULL, 10);
			if (timeout_ms <= 0) {
				timeout_ms = 3000;
			}
		} else if (strcmp(options[i].key, "max_buffer") == 0) {
			long v = strtol(options[i].value, NULL, 10);
			max_buffer = v > 0 ? (size_t)v : 10000;
		}
	}
	if (!url || !token_file) {
		mosquitto_log_printf(MOSQ_LOG_ERR, LOG_PREFIX "plugin_opt_url and plugin_opt_token_file are required");
		return MOSQ_ERR_INVAL;
	}
	size_t ulen = strlen(url);
	while (ulen > 0 && url[ulen - 1] == '/') {
		ulen--;
	}
	base_url = mosquitto_malloc(ulen + 1);
	if (!base_url) {
		return MOSQ_ERR_NOMEM;
	}
	memcpy(base_url, url, ulen);
	base_url[ulen] = '\0';

	char *token = read_token(token_file);
	if (!token) {
		return MOSQ_ERR_INVAL;
	}
	size_t hlen = strlen(token) + 32;
	char *auth = mosquitto_malloc(hlen);
	if (!auth) {
		mosquitto_free(token);
		return MOSQ_ERR_NOMEM;
	}
	snprintf(auth, hlen, "Authorization: Bearer %s", token);
	memset(token, 0, strlen(token));
	mosquitto_free(token);

	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK || !(curl = curl_easy_init())) {
		mosquitto_free(auth);
		mosquitto_log_printf(MOSQ_LOG_ERR, LOG_PREFIX "libcurl failed to start");
		return MOSQ_ERR_UNKNOWN;
	}
	headers = curl_slist_append(NULL, "Content-Type: application/json");
	headers = curl_slist_append(headers, auth);
	headers = curl_slist_append(headers, "Expect:");
	memset(auth, 0, strlen(auth));
	mosquitto_free(auth);
	curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
	curl_easy_setopt(curl, CURLOPT_POST, 1L);
	curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, timeout_ms);
	curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms);
	curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(curl, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(curl, CURLOPT_TCP_NODELAY, 1L);
	curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");

	int events[] = {MOSQ_EVT_BASIC_AUTH, MOSQ_EVT_ACL_CHECK, MOSQ_EVT_MESSAGE, MOSQ_EVT_TICK,
	                MOSQ_EVT_DISCONNECT};
	MOSQ_FUNC_generic_callback funcs[] = {on_basic_auth, on_acl_check, on_message, on_tick, on_disconnect};
	for (size_t i = 0; i < sizeof(events) / sizeof(events[0]); i++) {
		int rc = mosquitto_callback_register(plugin_id, events[i], funcs[i], NULL, NULL);
		if (rc != MOSQ_ERR_SUCCESS) {
			mosquitto_log_printf(MOSQ_LOG_ERR, LOG_PREFIX "cannot register event %d (%d)", events[i], rc);
			return rc;
		}
	}
	last_sync_ns = mono_ns();
	mosquitto_log_printf(MOSQ_LOG_INFO, LOG_PREFIX "device plane at %s (timeout %ld ms)", base_url, timeout_ms);
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	(void)options;
	(void)option_count;
	if (curl && (nmsgs || ndiscs)) {
		next_try_ns = 0;
		sync_now(); /* last chance for buffered telemetry */
	}
	int events[] = {MOSQ_EVT_BASIC_AUTH, MOSQ_EVT_ACL_CHECK, MOSQ_EVT_MESSAGE, MOSQ_EVT_TICK,
	                MOSQ_EVT_DISCONNECT};
	MOSQ_FUNC_generic_callback funcs[] = {on_basic_auth, on_acl_check, on_message, on_tick, on_disconnect};
	for (size_t i = 0; i < sizeof(events) / sizeof(events[0]); i++) {
		mosquitto_callback_unregister(plugin_id, events[i], funcs[i], NULL);
	}
	for (size_t b = 0; b < NBUCKETS; b++) {
		while (buckets[b]) {
			struct conn *c = buckets[b];
			buckets[b] = c->next;
			free_conn(c);
		}
	}
	nconns = 0;
	clear_pending_msgs();
	clear_pending_discs();
	mosquitto_free(msgs);
	mosquitto_free(discs);
	msgs = NULL;
	discs = NULL;
	if (curl) {
		curl_easy_cleanup(curl);
		curl = NULL;
	}
	curl_slist_free_all(headers);
	headers = NULL;
	curl_global_cleanup();
	mosquitto_free(base_url);
	base_url = NULL;
	return MOSQ_ERR_SUCCESS;
}
