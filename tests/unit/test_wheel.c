/* The timing wheel (util/wheel.h), driven by hand-made time.
 *
 * The contract under test (the header's head comment): a timer fires exactly once, at the
 * first advance after the end of the tick holding its deadline (never early, at most one tick
 * late); a deadline already in a processed tick counts as the current one. A model computes
 * when each timer must fire and random schedules, cancels and advances (long stalls
 * included) are checked against it.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <time.h>

#include "testutil.h"

#include "util/error.h"
#include "util/wheel.h"

#define TICK 10

/* A timed object: the timer embedded, as in the server. */
struct obj {
    wheel_timer_t timer;
    int fired;         /* times fired */
    uint64_t fired_at; /* now of the last firing */
    uint64_t due;      /* the deadline last armed */
};

static struct obj *obj_of(wheel_timer_t *t) {
    return (struct obj *)((char *)t - offsetof(struct obj, timer));
}

static void on_fire(wheel_timer_t *t, uint64_t now) {
    struct obj *o = obj_of(t);
    assert_false(wheel_timer_armed(t)); /* disarmed before the call */
    assert_true(now >= o->due);         /* never early */
    o->fired++;
    o->fired_at = now;
}

static void arm(wheel_t *w, struct obj *o, uint64_t due) {
    o->due = due;
    wheel_schedule(w, &o->timer, due);
    assert_true(wheel_timer_armed(&o->timer));
}

static void test_init(void **state) {
    (void)state;
    wheel_t w;
    assert_int_equal(wheel_init(&w, 1000, 10, 12345), 0);
    assert_int_equal(w.mask, 1023);
    assert_int_equal(w.tick, 10);
    assert_int_equal(w.count, 0);
    wheel_destroy(&w);
    assert_null(w.slots);
    assert_int_equal(wheel_init(&w, 1024, 0, 0), 0);
    assert_int_equal(w.mask, 1023);
    assert_int_equal(w.tick, 1); /* a zero tick is one ms */
    wheel_destroy(&w);
    assert_int_equal(wheel_init(&w, 1, 5, 0), 0);
    assert_int_equal(w.mask, 0);
    wheel_destroy(&w);
    assert_int_equal(wheel_init(&w, 0, 5, 0), 0);
    assert_int_equal(w.mask, 0);
    wheel_destroy(&w);
}

static void test_fires_once_at_tick_end(void **state) {
    (void)state;
    wheel_t w;
    assert_int_equal(wheel_init(&w, 64, TICK, 1000), 0);
    struct obj o = {0};
    wheel_timer_init(&o.timer, on_fire);
    assert_false(wheel_timer_armed(&o.timer));
    arm(&w, &o, 1055); /* in tick 105 */
    assert_int_equal(w.count, 1);
    /* Not before the deadline, nor inside its tick. */
    for (uint64_t now = 1000; now < 1060; now += 3) {
        assert_int_equal(wheel_advance(&w, now), 0);
        assert_int_equal(o.fired, 0);
    }
    assert_int_equal(wheel_advance(&w, 1060), 1);
    assert_int_equal(o.fired, 1);
    assert_int_equal(o.fired_at, 1060);
    assert_int_equal(w.count, 0);
    assert_false(wheel_timer_armed(&o.timer));
    /* Once only. */
    assert_int_equal(wheel_advance(&w, 5000), 0);
    assert_int_equal(o.fired, 1);
    wheel_destroy(&w);
}

static void test_due_mid_tick_after_mid_tick_advance(void **state) {
    (void)state;
    /* The bug the integration tests found: an advance in the middle of a tick must not park
     * a timer due later in that tick for a whole revolution. */
    wheel_t w;
    assert_int_equal(wheel_init(&w, 16, TICK, 0), 0);
    struct obj o = {0};
    wheel_timer_init(&o.timer, on_fire);
    arm(&w, &o, 108);
    assert_int_equal(wheel_advance(&w, 103), 0);
    assert_int_equal(wheel_advance(&w, 108), 0); /* same tick: at most one tick late */
    assert_int_equal(wheel_advance(&w, 110), 1);
    assert_int_equal(o.fired, 1);
    /* Armed while the clock is inside its tick. */
    assert_int_equal(wheel_advance(&w, 205), 0);
    arm(&w, &o, 207);
    assert_int_equal(wheel_advance(&w, 209), 0);
    assert_int_equal(wheel_advance(&w, 211), 1);
    assert_int_equal(o.fired, 2);
    wheel_destroy(&w);
}

static void test_due_in_past(void **state) {
    (void)state;
    wheel_t w;
    assert_int_equal(wheel_init(&w, 64, TICK, 0), 0);
    assert_int_equal(wheel_advance(&w, 500), 0);
    struct obj a = {0}, b = {0};
    wheel_timer_init(&a.timer, on_fire);
    wheel_timer_init(&b.timer, on_fire);
    arm(&w, &a, 0);   /* long past */
    arm(&w, &b, 499); /* just past */
    assert_int_equal(w.count, 2);
    assert_int_equal(wheel_advance(&w, 510), 2);
    assert_int_equal(a.fired, 1);
    assert_int_equal(b.fired, 1);
    /* A deadline in the past more than a revolution ago still fires once, promptly. */
    assert_int_equal(wheel_advance(&w, 100000), 0);
    arm(&w, &a, 1);
    assert_int_equal(wheel_advance(&w, 100010), 1);
    assert_int_equal(a.fired, 2);
    wheel_destroy(&w);
}

static void test_cancel_and_rearm(void **state) {
    (void)state;
    wheel_t w;
    assert_int_equal(wheel_init(&w, 64, TICK, 0), 0);
    struct obj o = {0}, p = {0};
    wheel_timer_init(&o.timer, on_fire);
    wheel_timer_init(&p.timer, on_fire);
    wheel_cancel(&w, &o.timer); /* not armed: harmless */
    assert_int_equal(w.count, 0);
    arm(&w, &o, 100);
    arm(&w, &p, 100);
    wheel_cancel(&w, &o.timer);
    assert_false(wheel_timer_armed(&o.timer));
    assert_int_equal(w.count, 1);
    wheel_cancel(&w, &o.timer); /* twice: harmless */
    assert_int_equal(w.count, 1);
    assert_int_equal(wheel_advance(&w, 200), 1);
    assert_int_equal(o.fired, 0);
    assert_int_equal(p.fired, 1);
    /* Re-arming an armed timer moves it; the count does not change. */
    arm(&w, &o, 300);
    arm(&w, &o, 900);
    assert_int_equal(w.count, 1);
    assert_int_equal(wheel_advance(&w, 500), 0);
    arm(&w, &o, 520); /* pulled in again */
    assert_int_equal(w.count, 1);
    assert_int_equal(wheel_advance(&w, 530), 1);
    assert_int_equal(o.fired, 1);
    assert_int_equal(o.fired_at, 530);
    assert_int_equal(w.count, 0);
    wheel_destroy(&w);
}

static void test_beyond_one_revolution(void **state) {
    (void)state;
    /* 16 slots of 10 ms: a revolution is 160 ms. Deadlines several revolutions out share
     * slots with nearer ones and must wait their own revolution. */
    wheel_t w;
    assert_int_equal(wheel_init(&w, 16, TICK, 0), 0);
    struct obj o[5];
    memset(o, 0, sizeof(o));
    uint64_t due[5] = {35, 35 + 160, 35 + 320, 35 + 1600, 35 + 160000};
    for (int i = 0; i < 5; i++) {
        wheel_timer_init(&o[i].timer, on_fire);
        arm(&w, &o[i], due[i]);
    }
    for (uint64_t now = 1; now <= 161000; now++) {
        wheel_advance(&w, now);
        for (int i = 0; i < 5; i++) {
            int want = now >= (due[i] / TICK + 1) * TICK ? 1 : 0;
            if (o[i].fired != want)
                fail_msg("timer %d (due %llu) fired %d times at %llu", i,
                         (unsigned long long)due[i], o[i].fired, (unsigned long long)now);
        }
    }
    assert_int_equal(w.count, 0);
    wheel_destroy(&w);
}

static void test_long_stall(void **state) {
    (void)state;
    /* The clock jumps several revolutions at once: every timer due fires once, those still
     * ahead stay. */
    wheel_t w;
    assert_int_equal(wheel_init(&w, 64, TICK, 0), 0);
    enum { N = 5000 };
    struct obj *o = calloc(N, sizeof(*o));
    assert_non_null(o);
    for (int i = 0; i < N; i++) {
        wheel_timer_init(&o[i].timer, on_fire);
        arm(&w, &o[i], (uint64_t)i * 7); /* 0 .. 35 s: about 55 revolutions of 640 ms */
    }
    uint64_t fired = wheel_advance(&w, 20000); /* 31 revolutions in one call */
    uint64_t expect = 0;
    for (int i = 0; i < N; i++) {
        int want = (uint64_t)i * 7 / TICK < 20000 / TICK ? 1 : 0;
        assert_int_equal(o[i].fired, want);
        expect += (uint64_t)want;
    }
    assert_int_equal(fired, expect);
    assert_int_equal(w.count, N - expect);
    fired = wheel_advance(&w, 1000000);
    assert_int_equal(fired, N - expect);
    for (int i = 0; i < N; i++)
        assert_int_equal(o[i].fired, 1);
    assert_int_equal(w.count, 0);
    wheel_destroy(&w);
    free(o);
}

static void test_time_going_backwards(void **state) {
    (void)state;
    wheel_t w;
    assert_int_equal(wheel_init(&w, 64, TICK, 1000), 0);
    struct obj o = {0};
    wheel_timer_init(&o.timer, on_fire);
    arm(&w, &o, 1005);
    assert_int_equal(wheel_advance(&w, 500), 0); /* before the start */
    assert_int_equal(wheel_advance(&w, 1010), 1);
    arm(&w, &o, 1100);
    assert_int_equal(wheel_advance(&w, 900), 0);
    assert_int_equal(o.fired, 1);
    assert_int_equal(wheel_advance(&w, 1110), 1);
    assert_int_equal(o.fired, 2);
    wheel_destroy(&w);
}

/* ---- callbacks that change the wheel ---- */

static wheel_t *g_wheel;

struct periodic {
    wheel_timer_t timer;
    uint64_t period;
    int fired;
};

static void on_periodic(wheel_timer_t *t, uint64_t now) {
    struct periodic *p = (struct periodic *)t;
    p->fired++;
    wheel_schedule(g_wheel, t, now + p->period); /* re-arms itself */
}

static void test_callback_rearms_itself(void **state) {
    (void)state;
    wheel_t w;
    assert_int_equal(wheel_init(&w, 32, TICK, 0), 0);
    g_wheel = &w;
    struct periodic p = {.period = 50};
    wheel_timer_init(&p.timer, on_periodic);
    wheel_schedule(&w, &p.timer, 50);
    for (uint64_t now = 0; now <= 1000; now += TICK)
        wheel_advance(&w, now);
    /* Fires at 60 (end of tick 5), then every 60 ms (50 + one tick of lateness). */
    assert_int_equal(p.fired, 16);
    assert_int_equal(w.count, 1);
    assert_true(wheel_timer_armed(&p.timer));
    /* Re-arming to a deadline already past, from the callback, during one long advance:
     * not an endless loop; it fires again only in later ticks. */
    p.period = 0;
    uint64_t fired = wheel_advance(&w, 1500);
    assert_true(fired >= 1 && fired <= 51);
    assert_int_equal(w.count, 1);
    wheel_cancel(&w, &p.timer);
    assert_int_equal(w.count, 0);
    wheel_destroy(&w);
}

struct canceller {
    wheel_timer_t timer;
    wheel_timer_t *victim; /* cancelled when this one fires */
    struct obj *arm_obj;   /* armed (due in the past) when this one fires */
    int fired;
};

static void on_cancel_other(wheel_timer_t *t, uint64_t now) {
    struct canceller *c = (struct canceller *)t;
    c->fired++;
    if (c->victim)
        wheel_cancel(g_wheel, c->victim);
    if (c->arm_obj) {
        c->arm_obj->due = 0;
        wheel_schedule(g_wheel, &c->arm_obj->timer, now - 5);
    }
}

static void test_callback_cancels_and_arms_others(void **state) {
    (void)state;
    wheel_t w;
    assert_int_equal(wheel_init(&w, 32, TICK, 0), 0);
    g_wheel = &w;
    /* Same slot, same deadline: whichever fires first cancels the other, so exactly one
     * fires whatever the order within the slot. */
    struct canceller a = {0}, b = {0};
    wheel_timer_init(&a.timer, on_cancel_other);
    wheel_timer_init(&b.timer, on_cancel_other);
    a.victim = &b.timer;
    b.victim = &a.timer;
    wheel_schedule(&w, &a.timer, 100);
    wheel_schedule(&w, &b.timer, 100);
    assert_int_equal(wheel_advance(&w, 110), 1);
    assert_int_equal(a.fired + b.fired, 1);
    assert_int_equal(w.count, 0);
    /* Cancelling a timer of a later tick in the same advance. */
    struct canceller c = {0};
    struct obj later = {0};
    wheel_timer_init(&c.timer, on_cancel_other);
    wheel_timer_init(&later.timer, on_fire);
    c.victim = &later.timer;
    wheel_schedule(&w, &c.timer, 200);
    arm(&w, &later, 250);
    assert_int_equal(wheel_advance(&w, 300), 1);
    assert_int_equal(later.fired, 0);
    assert_int_equal(w.count, 0);
    /* Arming another timer with a past deadline: it fires, once, by the next tick. */
    struct canceller d = {0};
    struct obj armed = {0};
    wheel_timer_init(&d.timer, on_cancel_other);
    wheel_timer_init(&armed.timer, on_fire);
    d.arm_obj = &armed;
    wheel_schedule(&w, &d.timer, 400);
    wheel_advance(&w, 410);
    assert_int_equal(d.fired, 1);
    wheel_advance(&w, 420);
    assert_int_equal(armed.fired, 1);
    assert_int_equal(w.count, 0);
    wheel_destroy(&w);
}

static int g_freed;

static void on_free_self(wheel_timer_t *t, uint64_t now) {
    (void)now;
    g_freed++;
    free(t); /* the wheel must not touch t after this (ASan would see it) */
}

static void test_callback_frees_its_object(void **state) {
    (void)state;
    wheel_t w;
    assert_int_equal(wheel_init(&w, 8, TICK, 0), 0);
    g_freed = 0;
    for (int i = 0; i < 100; i++) {
        wheel_timer_t *t = malloc(sizeof(*t));
        assert_non_null(t);
        wheel_timer_init(t, on_free_self);
        wheel_schedule(&w, t, (uint64_t)(i % 7) * TICK); /* several per slot */
    }
    assert_int_equal(wheel_advance(&w, 1000), 100);
    assert_int_equal(g_freed, 100);
    assert_int_equal(w.count, 0);
    wheel_destroy(&w);
}

/* ---- against a model ---- */

struct mobj {
    wheel_timer_t timer;
    bool armed;
    uint64_t due;
    uint64_t fire_tick; /* must have fired once an advance's now / TICK is past this */
};

static uint64_t g_model_fired;

static void on_model(wheel_timer_t *t, uint64_t now) {
    struct mobj *m = (struct mobj *)t;
    assert_true(m->armed);
    /* Never before the deadline. (It may fire before its tick ends when an advance spans a
     * whole revolution: the slot is visited and the deadline has passed.) */
    assert_true(now >= m->due);
    m->armed = false;
    g_model_fired++;
}

static void test_against_model(void **state) {
    (void)state;
    enum { N = 400, SLOTS = 32 };
    uint64_t rs = 12345;
    for (int round = 0; round < 20; round++) {
        wheel_t w;
        uint64_t now = tu_rand(&rs) % 100000;
        assert_int_equal(wheel_init(&w, SLOTS, TICK, now), 0);
        uint64_t done = now / TICK; /* ticks before this one are processed */
        struct mobj *m = calloc(N, sizeof(*m));
        assert_non_null(m);
        for (int i = 0; i < N; i++)
            wheel_timer_init(&m[i].timer, on_model);
        for (int step = 0; step < 3000; step++) {
            uint64_t r = tu_rand(&rs) % 100;
            struct mobj *o = &m[tu_rand(&rs) % N];
            if (r < 50) {
                /* Deadlines in the past, near, and several revolutions ahead. */
                uint64_t span = (tu_rand(&rs) % 4 == 0) ? 5 * SLOTS * TICK : 3 * TICK;
                uint64_t due = now + tu_rand(&rs) % span;
                if (tu_rand(&rs) % 8 == 0)
                    due = now > 1000 ? now - tu_rand(&rs) % 1000 : 0;
                wheel_schedule(&w, &o->timer, due);
                o->armed = true;
                o->due = due;
                o->fire_tick = due / TICK < done ? done : due / TICK;
            } else if (r < 60) {
                wheel_cancel(&w, &o->timer);
                o->armed = false;
            } else {
                uint64_t dt = tu_rand(&rs) % 30;
                if (tu_rand(&rs) % 50 == 0)
                    dt = tu_rand(&rs) % (8 * SLOTS * TICK); /* a stall */
                now += dt;
                g_model_fired = 0;
                uint64_t fired = wheel_advance(&w, now); /* before reading g_model_fired */
                assert_int_equal(fired, g_model_fired);
                if (now / TICK > done)
                    done = now / TICK;
                for (int i = 0; i < N; i++)
                    if (m[i].armed && now / TICK > m[i].fire_tick)
                        fail_msg("timer %d (due %llu) not fired at %llu", i,
                                 (unsigned long long)m[i].due, (unsigned long long)now);
            }
            uint64_t armed = 0;
            for (int i = 0; i < N; i++) {
                assert_int_equal(wheel_timer_armed(&m[i].timer), m[i].armed);
                armed += m[i].armed;
            }
            assert_int_equal(w.count, armed);
        }
        for (int i = 0; i < N; i++)
            wheel_cancel(&w, &m[i].timer);
        assert_int_equal(w.count, 0);
        free(m);
        wheel_destroy(&w);
    }
}

/* ---- cost ---- */

static double seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void test_many_timers(void **state) {
    (void)state;
    enum { N = 100000 };
    wheel_t w;
    assert_int_equal(wheel_init(&w, 4096, TICK, 0), 0);
    struct obj *o = calloc(N, sizeof(*o));
    assert_non_null(o);
    /* 100k timers over about one revolution (41 s): each tick fires only its own. */
    for (int i = 0; i < N; i++) {
        wheel_timer_init(&o[i].timer, on_fire);
        arm(&w, &o[i], (uint64_t)i * 409 % 40960);
    }
    assert_int_equal(w.count, N);
    double t0 = seconds();
    uint64_t total = 0, max_one = 0;
    for (uint64_t now = TICK; now <= 41000; now += TICK) {
        uint64_t n = wheel_advance(&w, now);
        total += n;
        if (n > max_one)
            max_one = n;
    }
    double t1 = seconds();
    assert_int_equal(total, N);
    assert_true(max_one <= 30); /* about 25 per 10 ms tick: each advance fires only its due */
    assert_int_equal(w.count, 0);
    for (int i = 0; i < N; i++)
        assert_int_equal(o[i].fired, 1);
    /* Idle ticks cost nothing: 100k timers a day away, then a thousand empty advances. */
    for (int i = 0; i < N; i++)
        arm(&w, &o[i], 41000 + 86400000 + (uint64_t)i);
    double t2 = seconds();
    for (uint64_t now = 41000; now < 51000; now += TICK)
        assert_int_equal(wheel_advance(&w, now), 0);
    double t3 = seconds();
    /* Cancelling them all is O(1) each. */
    for (int i = 0; i < N; i++)
        wheel_cancel(&w, &o[i].timer);
    assert_int_equal(w.count, 0);
    double t4 = seconds();
    print_message("100k timers: fire over a revolution %.3f s, 1000 idle advances %.3f s, "
                  "cancel all %.3f s\n",
                  t1 - t0, t3 - t2, t4 - t3);
    /* Generous bounds (sanitizers, shared machines): linear work is far below them. */
    assert_true(t1 - t0 < 5.0);
    assert_true(t3 - t2 < 5.0);
    assert_true(t4 - t3 < 2.0);
    free(o);
    wheel_destroy(&w);
}

static void test_far_deadline(void **state) {
    (void)state;
    wheel_t w;
    assert_int_equal(wheel_init(&w, 16, TICK, 0), 0);
    struct obj o = {0};
    wheel_timer_init(&o.timer, on_fire);
    arm(&w, &o, UINT64_MAX);
    assert_int_equal(wheel_advance(&w, UINT64_MAX / 2), 0);
    assert_int_equal(o.fired, 0);
    assert_int_equal(w.count, 1);
    wheel_cancel(&w, &o.timer);
    wheel_destroy(&w);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_init),
        cmocka_unit_test(test_fires_once_at_tick_end),
        cmocka_unit_test(test_due_mid_tick_after_mid_tick_advance),
        cmocka_unit_test(test_due_in_past),
        cmocka_unit_test(test_cancel_and_rearm),
        cmocka_unit_test(test_beyond_one_revolution),
        cmocka_unit_test(test_long_stall),
        cmocka_unit_test(test_time_going_backwards),
        cmocka_unit_test(test_callback_rearms_itself),
        cmocka_unit_test(test_callback_cancels_and_arms_others),
        cmocka_unit_test(test_callback_frees_its_object),
        cmocka_unit_test(test_against_model),
        cmocka_unit_test(test_many_timers),
        cmocka_unit_test(test_far_deadline),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
