// ThreadSanitizer's defaults for nuri's emulated test programs: the first race report ends the
// program, so a race fails its test; and no sleep at exit. TSan's atexit_sleep_ms (1000 by
// default) waits a second before every program's exit for races with threads still running;
// nuri's test programs join their threads before they return, and with one process per test
// that second was about 450 s of the TSan suite's test time (about 4 minutes of CI). TSAN_OPTIONS
// in the environment still overrides. (Set here rather than per test because ctest's
// ENVIRONMENT, as gtest_discover_tests passes it, keeps only one variable, and some tests need
// another one.)
#if defined(__SANITIZE_THREAD__)
extern "C" const char* __tsan_default_options() { return "halt_on_error=1:atexit_sleep_ms=0"; }
#endif
