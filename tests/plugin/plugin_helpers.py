"""Shared text for the plugin tests."""

ECHO_TEST = '''
def test_echo(vm, golden):
    s = vm("guests/echo.bin")
    s.sendline("hello")
    s.expect("hello", timeout=1)
    s.wait(1.2)
    assert s == golden
'''
