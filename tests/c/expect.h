/* What the C test programs share: EXPECT(cond) counts a check and reports a
 * failed one on stderr with its line; the program ends with
 * "NAME: N passed, M failed" (the summary line the test runners read). */
#ifndef GR_TEST_EXPECT_H
#define GR_TEST_EXPECT_H

#include <stdio.h>

static int failures, checks;

#define EXPECT(cond)                                                           \
    do {                                                                       \
        checks++;                                                              \
        if (!(cond)) {                                                         \
            failures++;                                                        \
            fprintf(stderr, "%s:%d: expected %s\n", __FILE__, __LINE__, #cond); \
        }                                                                      \
    } while (0)

static int report(const char *name) {
    printf("%s: %d passed, %d failed\n", name, checks - failures, failures);
    fflush(stdout);
    return failures != 0;
}

#endif
