from datetime import datetime

from sqlalchemy import DateTime, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    title: Mapped[str] = mapped_column(String(200), nullable=False)  # 2.0: was `name` (renamed)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)

    def as_json(self):
        return {"id": self.id, "name": self.title, "created": self.created.isoformat()}
