"""The service's settings (service/settings.py): from the environment, and the defaults."""

from __future__ import annotations

from service.settings import Settings


def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv("ASEN_PORT", "9001")
    monkeypatch.setenv("ASEN_CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("ASEN_API_KEY", "")
    monkeypatch.setenv("ASEN_ADMIN_API_KEY", "s3cret")
    monkeypatch.setenv("ASEN_BATCH_MAX_SIZE", "1")
    monkeypatch.setenv("ASEN_MAX_UPLOAD_BYTES", "2048")
    s = Settings()
    assert s.port == 9001 and s.host == "127.0.0.1"
    assert s.cors_origins == ["https://a.example", "https://b.example"]
    assert s.api_key is None
    assert s.admin_api_key is not None and s.admin_api_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s)
    assert s.batching is False and s.max_upload_bytes == 2048


def test_settings_defaults(monkeypatch):
    for name in ("ASEN_PORT", "ASEN_HOST", "ASEN_MAX_UPLOAD_BYTES", "ASEN_INDEX_DIR"):
        monkeypatch.delenv(name, raising=False)
    s = Settings()
    assert (s.host, s.port) == ("127.0.0.1", 8000)
    assert s.max_upload_bytes == 10 * 1024 * 1024
    assert s.batching and s.checkpoint is None
