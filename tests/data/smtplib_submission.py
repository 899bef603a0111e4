"""Submit over smarthost's [[listener]] ports with Python's smtplib, a real client.

usage: smtplib_submission.py HOST STARTTLS_PORT IMPLICIT_PORT USER PASSWORD CAFILE

587-style: AUTH must not be offered before STARTTLS, then login and send.
465-style: a wrong password is refused with 535, the right one sends.
Prints "ok" and exits 0 when every step went as expected.
"""
import smtplib
import ssl
import sys

host, starttls_port, implicit_port, user, password, cafile = sys.argv[1:]
context = ssl.create_default_context(cafile=cafile)
context.check_hostname = False  # the test certificate names localhost, we dial 127.0.0.1


def message(subject):
    return (
        "From: App <app@app.test>\r\nTo: <customer@example.net>\r\n"
        f"Subject: {subject}\r\n\r\nsent by smtplib\r\n"
    )


with smtplib.SMTP(host, int(starttls_port), timeout=20) as s:
    s.ehlo("smtplib.test")
    if s.has_extn("auth"):
        sys.exit("AUTH offered before STARTTLS")
    try:
        s.login(user, password)
        sys.exit("login succeeded before STARTTLS")
    except smtplib.SMTPNotSupportedError:
        pass
    s.starttls(context=context)
    s.ehlo("smtplib.test")
    s.login(user, password)
    s.sendmail("app@app.test", ["customer@example.net"], message("over 587"))

with smtplib.SMTP_SSL(host, int(implicit_port), context=context, timeout=20) as s:
    s.ehlo("smtplib.test")
    try:
        s.login(user, "not the password")
        sys.exit("a wrong password was accepted")
    except smtplib.SMTPAuthenticationError as e:
        if e.smtp_code != 535:
            sys.exit(f"wrong password answered {e.smtp_code}, not 535")
    s.login(user, password)
    s.sendmail("app@app.test", ["customer@example.net"], message("over 465"))

print("ok")
