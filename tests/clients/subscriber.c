/*
 * An ionstream subscriber in C, written from docs/wire.md alone (libzmq + jansson).
 *
 * Build:  gcc -std=c11 -O2 -Wall -Wextra -o subscriber subscriber.c $(pkg-config --cflags --libs libzmq jansson)
 *         (Debian/Ubuntu: apt-get install gcc libzmq3-dev libjansson-dev pkg-config)
 * Run:    ./subscriber [-t SECONDS] [-k CLIENT.key_secret -s SERVER.key] ENDPOINT COUNT TOPIC [TOPIC ...]
 *
 * Receives COUNT messages of the given topics and prints one JSON object per message on stdout:
 *   {"topic": "peaks", "seq": 41, "scan": 1042, "gap": 0, "restarted": false, "schema": [1, 0],
 *    "header": {...the header as received...},
 *    "buffers": {"mz": {"dtype": "<f8", "shape": [3], "count": 3, "sum": 1741.37, "values": [...]}, ...}}
 * "values" holds every element as a double when a buffer has at most 64; "sum" is always there.
 *
 * Exit status: 0 after COUNT messages; 2 on timeout (-t); 3 for a message with another schema
 * major version (docs/wire.md section 8); 4 for a malformed message; 1 for usage/ZeroMQ errors.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#define MAX_FRAMES 64
#define MAX_TOPICS 16
#define MAX_VALUES_PRINTED 64

typedef struct {
    char name[64];
    char session[64];
    long long next_seq; /* -1: nothing received yet */
} topic_state;

static topic_state topics[MAX_TOPICS];
static int n_topics;

static int host_is_little_endian(void) {
    const uint16_t one = 1;
    return *(const uint8_t *)&one == 1;
}

/* Read one element of `size` bytes at `p`, of kind `kind` ('b','i','u','f'), byte order `order`. */
static int element_as_double(const unsigned char *p, char kind, int size, char order, double *out) {
    unsigned char tmp[8];
    if (size < 1 || size > 8) return -1;
    int swap = (order == '>' && host_is_little_endian()) || (order == '<' && !host_is_little_endian());
    for (int i = 0; i < size; i++) tmp[i] = swap ? p[size - 1 - i] : p[i];
    switch (kind) {
    case 'b': *out = tmp[0] ? 1.0 : 0.0; return size == 1 ? 0 : -1;
    case 'f':
        if (size == 4) { float f; memcpy(&f, tmp, 4); *out = f; return 0; }
        if (size == 8) { double d; memcpy(&d, tmp, 8); *out = d; return 0; }
        return -1;
    case 'i':
        if (size == 1) { int8_t v; memcpy(&v, tmp, 1); *out = v; return 0; }
        if (size == 2) { int16_t v; memcpy(&v, tmp, 2); *out = v; return 0; }
        if (size == 4) { int32_t v; memcpy(&v, tmp, 4); *out = v; return 0; }
        if (size == 8) { int64_t v; memcpy(&v, tmp, 8); *out = (double)v; return 0; }
        return -1;
    case 'u':
        if (size == 1) { uint8_t v; memcpy(&v, tmp, 1); *out = v; return 0; }
        if (size == 2) { uint16_t v; memcpy(&v, tmp, 2); *out = v; return 0; }
        if (size == 4) { uint32_t v; memcpy(&v, tmp, 4); *out = v; return 0; }
        if (size == 8) { uint64_t v; memcpy(&v, tmp, 8); *out = (double)v; return 0; }
        return -1;
    }
    return -1;
}

/* Parse a type string like "<f8": order, kind, item size. 0 on success. */
static int parse_dtype(const char *s, char *order, char *kind, int *size) {
    if (!s || strlen(s) < 3 || !strchr("<>|", s[0]) || !strchr("biufc", s[1])) return -1;
    char *end;
    long n = strtol(s + 2, &end, 10);
    if (*end != '\0' || n < 1 || n > 16) return -1;
    *order = s[0];
    *kind = s[1];
    *size = (int)n;
    return 0;
}

/* Read the 40-character Z85 key after `field` (public-key / secret-key) in a ZeroMQ certificate. */
static int read_key(const char *path, const char *field, char key[41]) {
    FILE *f = fopen(path, "r");
    if (!f) { fprintf(stderr, "cannot open %s: %s\n", path, strerror(errno)); return -1; }
    char line[512];
    int found = -1;
    while (fgets(line, sizeof line, f)) {
        char *p = line;
        while (*p == ' ' || *p == '\t') p++;
        if (strncmp(p, field, strlen(field)) != 0) continue;
        char *q = strchr(p, '"');
        if (q && strlen(q + 1) >= 41 && q[41] == '"') {
            memcpy(key, q + 1, 40);
            key[40] = '\0';
            found = 0;
            break;
        }
    }
    fclose(f);
    if (found) fprintf(stderr, "%s: no %s in this certificate\n", path, field);
    return found;
}

static topic_state *state_for(const char *topic) {
    for (int i = 0; i < n_topics; i++)
        if (strcmp(topics[i].name, topic) == 0) return &topics[i];
    return NULL;
}

static int usage(void) {
    fprintf(stderr, "usage: subscriber [-t SECONDS] [-k CLIENT.key_secret -s SERVER.key] ENDPOINT COUNT TOPIC [TOPIC ...]\n");
    return 1;
}

int main(int argc, char **argv) {
    int timeout_ms = -1;
    const char *client_key_file = NULL, *server_key_file = NULL;
    int a = 1;
    while (a < argc && argv[a][0] == '-') {
        if (a + 1 >= argc) return usage();
        if (strcmp(argv[a], "-t") == 0) timeout_ms = (int)(atof(argv[a + 1]) * 1000);
        else if (strcmp(argv[a], "-k") == 0) client_key_file = argv[a + 1];
        else if (strcmp(argv[a], "-s") == 0) server_key_file = argv[a + 1];
        else return usage();
        a += 2;
    }
    if (argc - a < 3) return usage();
    const char *endpoint = argv[a];
    long count = atol(argv[a + 1]);

    void *ctx = zmq_ctx_new();
    void *sub = zmq_socket(ctx, ZMQ_SUB);
    int zero = 0;
    zmq_setsockopt(sub, ZMQ_LINGER, &zero, sizeof zero);
    if (timeout_ms >= 0) zmq_setsockopt(sub, ZMQ_RCVTIMEO, &timeout_ms, sizeof timeout_ms);
    if (client_key_file || server_key_file) {
        char server_public[41], client_public[41], client_secret[41];
        if (!client_key_file || !server_key_file) return usage();
        if (read_key(server_key_file, "public-key", server_public) || read_key(client_key_file, "public-key", client_public)
            || read_key(client_key_file, "secret-key", client_secret))
            return 1;
        zmq_setsockopt(sub, ZMQ_CURVE_SERVERKEY, server_public, 40);
        zmq_setsockopt(sub, ZMQ_CURVE_PUBLICKEY, client_public, 40);
        zmq_setsockopt(sub, ZMQ_CURVE_SECRETKEY, client_secret, 40);
    }
    for (int i = a + 2; i < argc && n_topics < MAX_TOPICS; i++) {
        topic_state *t = &topics[n_topics++];
        snprintf(t->name, sizeof t->name, "%s", argv[i]);
        t->next_seq = -1;
        zmq_setsockopt(sub, ZMQ_SUBSCRIBE, argv[i], strlen(argv[i]));
    }
    if (zmq_connect(sub, endpoint) != 0) {
        fprintf(stderr, "cannot connect to %s: %s\n", endpoint, zmq_strerror(zmq_errno()));
        return 1;
    }

    int status = 0;
    long received = 0;
    zmq_msg_t frames[MAX_FRAMES];
    while (received < count) {
        /* 1. receive every frame of one multipart message */
        int n = 0, more = 1;
        while (more) {
            if (n == MAX_FRAMES) { fprintf(stderr, "too many frames\n"); status = 4; goto done; }
            zmq_msg_init(&frames[n]);
            if (zmq_msg_recv(&frames[n], sub, 0) < 0) {
                int err = zmq_errno();
                zmq_msg_close(&frames[n]);
                for (int i = 0; i < n; i++) zmq_msg_close(&frames[i]);
                if (err == EAGAIN) { fprintf(stderr, "timeout after %ld message(s)\n", received); status = 2; }
                else { fprintf(stderr, "receive failed: %s\n", zmq_strerror(err)); status = 1; }
                goto done;
            }
            more = zmq_msg_more(&frames[n]);
            n++;
        }
        /* 2. topic: frame 0, compared exactly */
        char topic[64];
        size_t tlen = zmq_msg_size(&frames[0]);
        if (n < 2 || tlen == 0 || tlen >= sizeof topic) { fprintf(stderr, "malformed message\n"); status = 4; goto close_frames; }
        memcpy(topic, zmq_msg_data(&frames[0]), tlen);
        topic[tlen] = '\0';
        topic_state *state = state_for(topic);
        if (!state) goto close_frames; /* a topic that only shares our prefix */

        /* 3. header: a JSON object; check the schema major version */
        json_error_t jerr;
        json_t *header = json_loadb(zmq_msg_data(&frames[1]), zmq_msg_size(&frames[1]), 0, &jerr);
        if (!json_is_object(header)) { fprintf(stderr, "header is not a JSON object: %s\n", jerr.text); status = 4; json_decref(header); goto close_frames; }
        json_t *schema = json_object_get(header, "schema");
        if (!json_is_array(schema) || json_array_size(schema) < 2 || !json_is_integer(json_array_get(schema, 0))) {
            fprintf(stderr, "header has no schema version\n"); status = 4; json_decref(header); goto close_frames;
        }
        json_int_t major = json_integer_value(json_array_get(schema, 0));
        json_int_t minor = json_integer_value(json_array_get(schema, 1));
        if (major != 1) {
            fprintf(stderr, "message schema %lld.%lld is not understood by this reader (schema 1.x)\n", major, minor);
            status = 3; json_decref(header); goto close_frames;
        }

        /* 4. sequence numbers: gaps and restarts, per topic */
        json_int_t seq = json_integer_value(json_object_get(header, "seq"));
        const char *session = json_string_value(json_object_get(header, "session"));
        if (!session) session = "";
        long long gap = 0;
        int restarted = 0;
        if (state->next_seq >= 0) {
            if (strcmp(session, state->session) != 0 || seq < state->next_seq) restarted = 1;
            else gap = seq - state->next_seq;
        }
        state->next_seq = seq + 1;
        snprintf(state->session, sizeof state->session, "%s", session);

        /* 5. buffers: frame 2+i is described by buffers[i] */
        json_t *buffers = json_object_get(header, "buffers");
        if (!json_is_array(buffers) || (int)json_array_size(buffers) != n - 2) {
            fprintf(stderr, "header lists %zu buffers, message has %d\n", json_array_size(buffers), n - 2);
            status = 4; json_decref(header); goto close_frames;
        }
        json_t *out_buffers = json_object();
        for (size_t i = 0; i < json_array_size(buffers); i++) {
            json_t *d = json_array_get(buffers, i);
            const char *name = json_string_value(json_object_get(d, "name"));
            const char *dtype = json_string_value(json_object_get(d, "dtype"));
            json_t *shape = json_object_get(d, "shape");
            char order, kind;
            int size;
            if (!name || parse_dtype(dtype, &order, &kind, &size) || !json_is_array(shape)) {
                fprintf(stderr, "buffers[%zu] is malformed\n", i); status = 4; break;
            }
            size_t elements = 1;
            for (size_t k = 0; k < json_array_size(shape); k++) elements *= (size_t)json_integer_value(json_array_get(shape, k));
            const unsigned char *data = zmq_msg_data(&frames[2 + i]);
            size_t bytes = zmq_msg_size(&frames[2 + i]);
            if (bytes != elements * (size_t)size) {
                fprintf(stderr, "buffer %s: %zu bytes, %s x %zu elements need %zu\n", name, bytes, dtype, elements, elements * (size_t)size);
                status = 4; break;
            }
            json_t *info = json_pack("{s:s, s:O, s:I}", "dtype", dtype, "shape", shape, "count", (json_int_t)elements);
            if (kind != 'c') {
                double sum = 0.0, v;
                json_t *values = json_array();
                for (size_t e = 0; e < elements; e++) {
                    if (element_as_double(data + e * (size_t)size, kind, size, order, &v)) { status = 4; break; }
                    sum += v;
                    if (elements <= MAX_VALUES_PRINTED) json_array_append_new(values, json_real(v));
                }
                json_object_set_new(info, "sum", json_real(sum));
                if (elements <= MAX_VALUES_PRINTED) json_object_set_new(info, "values", values);
                else json_decref(values);
            }
            json_object_set_new(out_buffers, name, info);
        }
        if (status == 0) {
            json_t *line = json_pack("{s:s, s:I, s:O?, s:I, s:b, s:[I,I], s:O, s:O}", "topic", topic, "seq", seq,
                                     "scan", json_object_get(header, "scan"), "gap", (json_int_t)gap, "restarted", restarted,
                                     "schema", major, minor, "header", header, "buffers", out_buffers);
            char *text = json_dumps(line, JSON_COMPACT | JSON_REAL_PRECISION(17));
            printf("%s\n", text);
            fflush(stdout);
            free(text);
            json_decref(line);
            received++;
        }
        json_decref(out_buffers);
        json_decref(header);
    close_frames:
        for (int i = 0; i < n; i++) zmq_msg_close(&frames[i]);
        if (status) break;
    }
done:
    zmq_close(sub);
    zmq_ctx_term(ctx);
    return status;
}
